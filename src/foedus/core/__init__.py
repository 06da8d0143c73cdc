"""The pipes-and-filters kernel: messages, pods, filters, graphs and the runtime."""
