// The submit page: a job file is checked by the coordinator (POST /v1/jobs?dry_run=1) before
// anything is queued; a mistake is shown inline as the same one line the CLI prints, and the
// sites' verdicts say which would accept the job and why the others would not.
"use strict";

(() => {
  const form = () => document.getElementById("submit-form");
  const error = () => document.getElementById("job-error");

  function body() {
    const text = document.getElementById("job-yaml").value;
    const sites = document.getElementById("job-sites").value.split(",")
      .map((s) => s.trim()).filter(Boolean);
    return sites.length ? {job_yaml: text, sites} : {job_yaml: text};
  }

  function showError(message) {
    const out = error();
    out.textContent = message || "";
    out.hidden = !message;
    document.getElementById("job-yaml").setAttribute("aria-invalid", message ? "true" : "false");
  }

  function showVerdicts(answer) {
    const section = document.getElementById("verdicts-section");
    const list = document.getElementById("verdicts");
    // a literal credential is accepted, but the submitter is told who receives it
    const warning = document.getElementById("job-warning");
    const warnings = answer.warnings || [];
    warning.textContent = warnings.join(" ");
    warning.hidden = warnings.length === 0;
    list.replaceChildren(...answer.sites.map((v) => {
      const item = document.createElement("li");
      item.dataset.site = v.site;
      item.className = v.accepts === true ? "accepts" : v.accepts === false ? "refuses" : "unknown";
      const verb = v.accepts === true ? "would accept" : v.accepts === false ? "would refuse" : "may refuse";
      const offered = v.offered ? " (the job would be offered to it)" : "";
      item.textContent = `${v.site} ${verb}${offered}: ${v.reason}`;
      return item;
    }));
    section.hidden = false;
  }

  async function check() {
    const status = document.getElementById("check-status");
    status.textContent = "Checking with the coordinator…";
    const answer = await Console.api("POST", "/v1/jobs?dry_run=1", body());
    status.textContent = "";
    if (!answer.ok) {
      showError(answer.error);
      document.getElementById("verdicts-section").hidden = true;
      return false;
    }
    showError(null);
    showVerdicts(answer.data);
    return true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!form()) return;
    document.getElementById("job-upload").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      document.getElementById("job-yaml").value = await file.text();
      // forget the choice: the same file chosen again (edited meanwhile) is a change, read again
      event.target.value = "";
      await check();
    });
    document.getElementById("check").addEventListener("click", check);
    // verdicts are about the text that was checked: an edit withdraws them (an error stays,
    // as the operator fixes what it names)
    for (const id of ["job-yaml", "job-sites"]) {
      document.getElementById(id).addEventListener("input", () => {
        const section = document.getElementById("verdicts-section");
        if (section.hidden) return;
        section.hidden = true;
        document.getElementById("check-status").textContent =
          "The job file changed since the check; Check again for the sites' verdicts.";
      });
    }
    form().addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = document.getElementById("submit");
      button.disabled = true;
      try {
        if (!(await check())) return; // nothing is queued when the check fails
        const answer = await Console.api("POST", "/v1/jobs", body());
        if (!answer.ok) { showError(answer.error); return; }
        window.location.assign(`${document.location.pathname.replace(/\/submit$/, "")}/jobs/${encodeURIComponent(answer.data.id)}`);
      } finally {
        button.disabled = false;
      }
    });
  });
})();
