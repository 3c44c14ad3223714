"""The researcher's side of a study, over HTTP against a running service (`healthledger research`): define a
study, publish it and wait until the chain confirms it, ask feasibility, list studies, and run a Bulk Data
export of the cohort to a folder (kick-off, polls honouring `Retry-After`, files checked against the manifest's
sha256). The same calls as docs/research.md shows with curl."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_adapters.research_study import EXTENSION_BASE
from healthledger.research.service_client import FHIR_JSON, ServiceClient, ServiceError, header, outcome_text

SHA256_EXTENSION = EXTENSION_BASE + "export-file-sha256"  # (healthledger.research.export, the server's side)
MANIFEST_NAME = "manifest.json"


class ResearchError(ServiceError):
    """A researcher's call failed; the message says which step and what the server answered."""


@dataclass(frozen=True)
class ExportedFile:
    name: str
    resource_type: str
    count: int
    sha256: str


@dataclass(frozen=True)
class Exported:
    folder: Path
    transaction_time: str
    files: tuple[ExportedFile, ...]

    @property
    def resources(self) -> int:
        return sum(f.count for f in self.files)


class ResearcherClient(ServiceClient):
    """A researcher's calls: as a signed-in user or with a bearer token (a SMART backend client)."""

    error = ResearchError

    def studies(self, status: str | None = None) -> list[dict[str, Any]]:
        """The studies the caller may see (published ones, and their own drafts), one page after another."""
        path = "ResearchStudy" + (f"?status={status}" if status else "")
        found: list[dict[str, Any]] = []
        while path:
            bundle = self._fhir("GET", path, what="listing studies")
            found.extend(e["resource"] for e in bundle.get("entry") or [] if e.get("resource"))
            following = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), "")
            path = following.split("/fhir/", 1)[1] if "/fhir/" in following else ""
        return found

    def create(self, study: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(study, dict) or study.get("resourceType") != "ResearchStudy":
            raise self.error("the study file must hold one FHIR ResearchStudy (JSON with resourceType ResearchStudy)")
        return self._fhir("POST", "ResearchStudy", study, ok=(201,), what="creating the study")

    def publish(self, study_id: str, *, wait_seconds: float = 120.0, poll_seconds: float = 1.0,
                on_wait: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        """`$publish`, then wait until the study is active (the chain confirmed its registration)."""
        self._fhir("POST", f"ResearchStudy/{study_id}/$publish", {"resourceType": "Parameters"}, ok=(200, 202),
                   what="publishing the study")
        deadline = time.monotonic() + wait_seconds
        while True:
            study = self._fhir("GET", f"ResearchStudy/{study_id}", what="reading the study")
            if study.get("status") != "draft":
                return study
            if time.monotonic() >= deadline:
                raise self.error(f"ResearchStudy/{study_id} is not active after {wait_seconds:.0f} s: its on-chain "
                                 "registration is still pending or failed (run publish again to retry a failed one)")
            on_wait("waiting for the chain to confirm the registration")
            self.sleep(poll_seconds)

    def feasibility(self, study_id: str, criteria: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"resourceType": "Parameters"}
        if criteria is not None:
            body["parameter"] = [{"name": "criteria", "valueString": json.dumps(criteria)}]
        return self._fhir("POST", f"ResearchStudy/{study_id}/$feasibility", body, what="asking feasibility")

    def export(self, study_id: str, folder: Path, *, types: str = "", since: str = "", wait_seconds: float = 600.0,
               on_progress: Callable[[str], None] = lambda _: None) -> Exported:
        """Bulk Data export of the study's cohort into `folder`: each NDJSON file and the manifest, every file
        checked against the manifest's sha256 (a mismatch is an error and the file is not kept)."""
        study = self._fhir("GET", f"ResearchStudy/{study_id}", what="reading the study")
        enrollment = study.get("enrollment") or [{}]
        cohort = str(enrollment[0].get("reference") or "")
        if not cohort.startswith("Group/"):
            raise self.error(f"ResearchStudy/{study_id} names no cohort Group")
        query = "&".join(f"{k}={v}" for k, v in (("_type", types), ("_since", since)) if v)
        status, headers, body = self.request("GET", f"/fhir/{cohort}/$export" + (f"?{query}" if query else ""),
                                             None, {"Accept": FHIR_JSON, "Prefer": "respond-async"})
        location = header(headers, "Content-Location")
        if status != 202 or not location:
            raise self.error(f"starting the export: the server answered {status}: {outcome_text(body)}")
        deadline = time.monotonic() + wait_seconds
        while True:
            status, headers, body = self.request("GET", location, None, {"Accept": "application/json"})
            if status == 200:
                break
            if status not in (202, 429):
                raise self.error(f"the export failed: the server answered {status}: {outcome_text(body)}")
            if status == 202:
                on_progress(header(headers, "X-Progress") or "in progress")
            if time.monotonic() >= deadline:
                raise self.error(f"the export is not complete after {wait_seconds:.0f} s; its status URL: {location}")
            self.sleep(_retry_after(header(headers, "Retry-After")))
        manifest = json.loads(body)
        folder.mkdir(parents=True, exist_ok=True)
        files: list[ExportedFile] = []
        for item in manifest.get("output") or []:
            url = str(item["url"])
            name = url.rsplit("/", 1)[-1]
            if not name or name.startswith(".") or "/" in name or "\\" in name:
                raise self.error(f"the manifest names a file the client will not write: {name!r}")
            status, _, data = self.request("GET", url, None, {"Accept": "application/fhir+ndjson"})
            if status != 200:
                raise self.error(f"downloading {name}: the server answered {status}: {outcome_text(data)}")
            expected = str((item.get("extension") or {}).get(SHA256_EXTENSION) or "")
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                raise self.error(f"{name}: sha256 {digest} does not match the manifest's {expected or '(none)'}")
            (folder / name).write_bytes(data)
            files.append(ExportedFile(name, str(item["type"]), int(item["count"]), digest))
        (folder / MANIFEST_NAME).write_bytes(body)
        return Exported(folder, str(manifest.get("transactionTime") or ""), tuple(files))


def _retry_after(value: str | None) -> float:
    """Seconds to wait before the next poll (Bulk Data: the server's Retry-After; 1 s when it says nothing)."""
    try:
        return max(0.1, float(value)) if value else 1.0
    except ValueError:
        return 1.0
