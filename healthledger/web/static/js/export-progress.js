// Follows a Bulk Data export job (GET /fhir/$export-status/{job}, the same API as any client, with the page's
// own session): shows X-Progress in the polite live region while it is 202, reloads the page when it is done.
const box = document.getElementById("export-progress");
const line = document.getElementById("export-status");
const GIVE_UP_MS = 10 * 60 * 1000;
const started = Date.now();

async function poll() {
  const response = await fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 202 || response.status === 429) {
    const progress = response.headers.get("X-Progress");
    if (progress) line.textContent = `Preparing the files: ${progress}. This page updates by itself.`;
    const wait = Math.min(Number(response.headers.get("Retry-After") || 1), 5) * 1000;
    if (Date.now() - started < GIVE_UP_MS) setTimeout(poll, Math.max(wait, 700));
    return;
  }
  window.location.reload();
}

if (box && line) setTimeout(poll, 700);
