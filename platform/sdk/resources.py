"""One class per REST resource: auth, tokens, users and teams, models and grants, jobs, fine-tuning,
policies, quarantine, assets, generations, datasets, the copyright reference index and screening (the
audit trail is ``latentops.client.audit``).

Methods mirror the routes of ``docs/api.md`` one to one and return their JSON (typed in
``latentops.client.types``). Streams stay streams: a model download and an audit export are
written to disk chunk by chunk, a job's progress is an iterator over its Server-Sent Events.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from latentops.client.admin import PolicyData, ScreeningAdmin
from latentops.client.http import Http, download, server_events
from latentops.client.types import (
    Decision,
    Grant,
    Job,
    JobEvent,
    JobPage,
    Me,
    Model,
    NewToken,
    Progress,
    ProtectedName,
    ProtectedNamesEdit,
    ProtectedNamesPage,
    QuarantinedImage,
    Reference,
    ReferenceImport,
    ReferencePage,
    Review,
    ScreeningVerdict,
    Team,
    Token,
    User,
)
from latentops.core.errors import InvalidInput, ServiceUnavailable

_NAMES = "/policies/prompt/protected-names"


class Auth:
    def __init__(self, http: Http) -> None:
        self._http = http

    def me(self) -> Me:
        """Who the token belongs to: email, memberships, scopes."""
        return cast(Me, self._http.json("GET", "/auth/me"))


class Tokens:
    def __init__(self, http: Http) -> None:
        self._http = http

    def list(self) -> builtins.list[Token]:
        return cast(builtins.list[Token], self._http.json("GET", "/tokens"))

    def create(self, name: str, *, scopes: Sequence[str] = ("*",), expires_in_days: int = 90) -> NewToken:
        """A new token for the caller; its secret (``token``) is in this answer only."""
        return cast(NewToken, self._http.json("POST", "/tokens", body={"name": name, "scopes": list(scopes),
                                                                        "expires_in_days": expires_in_days}))

    def revoke(self, token_id: int) -> Token:
        return cast(Token, self._http.json("DELETE", f"/tokens/{token_id}"))


class Users:
    def __init__(self, http: Http) -> None:
        self._http = http

    def list(self, *, offset: int = 0, limit: int = 100) -> builtins.list[User]:
        return cast(builtins.list[User], self._http.json("GET", "/users", params={"offset": offset, "limit": limit}))

    def create(self, email: str, *, role: str, team: str, password: str | None = None,
               display_name: str = "") -> User:
        return cast(User, self._http.json("POST", "/users", body={
            "email": email, "role": role, "team": team, "password": password, "display_name": display_name}))

    def set_membership(self, user_id: int, *, team: str, role: str) -> User:
        return cast(User, self._http.json("PUT", f"/users/{user_id}/memberships", body={"team": team, "role": role}))

    def remove_membership(self, user_id: int, team: str) -> User:
        return cast(User, self._http.json("DELETE", f"/users/{user_id}/memberships/{team}"))

    def disable(self, user_id: int) -> User:
        return cast(User, self._http.json("POST", f"/users/{user_id}/disable"))

    def enable(self, user_id: int) -> User:
        return cast(User, self._http.json("POST", f"/users/{user_id}/enable"))

    def teams(self) -> builtins.list[Team]:
        return cast(builtins.list[Team], self._http.json("GET", "/teams"))

    def create_team(self, name: str) -> Team:
        return cast(Team, self._http.json("POST", "/teams", body={"name": name}))


class Models:
    def __init__(self, http: Http) -> None:
        self._http = http

    def list(self) -> builtins.list[Model]:
        return cast(builtins.list[Model], self._http.json("GET", "/models"))

    def get(self, name: str) -> Model:
        """One model with its versions (``versions`` is a list here)."""
        return cast(Model, self._http.json("GET", f"/models/{name}"))

    def import_(self, name: str, *, source: str, description: str = "", licence: str = "",
                sensitivity: str = "internal", owner_team: str | None = None) -> Model:
        """Import from the server's import folder (``source`` is relative to it)."""
        return cast(Model, self._http.json("POST", "/models", body={
            "name": name, "source": source, "description": description, "licence": licence,
            "sensitivity": sensitivity, "owner_team": owner_team}))

    def grants(self, name: str) -> builtins.list[Grant]:
        return cast(builtins.list[Grant], self._http.json("GET", f"/models/{name}/grants"))

    def grant(self, name: str, *, action: str, team: str | None = None, user: str | None = None) -> Grant:
        return cast(Grant, self._http.json("POST", f"/models/{name}/grants",
                                           body={"action": action, "team": team, "user": user}))

    def revoke(self, name: str, *, action: str, team: str | None = None, user: str | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("DELETE", f"/models/{name}/grants",
                                                    params={"action": action, "team": team, "user": user}))

    def download(self, name: str, dest: Path, *, version: int | None = None) -> Path:
        """Stream the weights to ``dest`` (a folder or a file path); needs a ``download`` grant."""
        return download(self._http, f"/models/{name}/download", Path(dest), {"version": version}, f"{name}.tar")


class Jobs:
    def __init__(self, http: Http) -> None:
        self._http = http

    def submit(self, kind: str, *, params: dict[str, Any] | None = None, team: str | None = None,
               priority: int | None = None) -> Job:
        """Queue a job; ``priority`` 0-9 (higher first), default the role's (see the jobs policy)."""
        return cast(Job, self._http.json("POST", "/jobs", body={"kind": kind, "params": params or {}, "team": team,
                                                                "priority": priority}))

    def list(self, *, state: str | None = None, offset: int = 0, limit: int = 50) -> JobPage:
        return cast(JobPage, self._http.json("GET", "/jobs", params={"state": state, "offset": offset,
                                                                     "limit": limit}))

    def iter(self, *, state: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every visible job, newest first, a page at a time."""
        offset: int | None = 0
        while offset is not None:
            page = self.list(state=state, offset=offset, limit=page_size)
            yield from page["items"]
            offset = page["next_offset"]

    def get(self, job_id: int) -> Job:
        return cast(Job, self._http.json("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: int) -> Job:
        return cast(Job, self._http.json("POST", f"/jobs/{job_id}/cancel"))

    def retry(self, job_id: int) -> Job:
        return cast(Job, self._http.json("POST", f"/jobs/{job_id}/retry"))

    def logs(self, job_id: int) -> builtins.list[JobEvent]:
        return cast(builtins.list[JobEvent], self._http.json("GET", f"/jobs/{job_id}/logs"))

    def progress(self, job_id: int) -> Iterator[Progress]:
        """The job's live progress (Server-Sent Events) until it finishes; the last item has ``finished``."""
        with self._http.stream("GET", f"/jobs/{job_id}/progress", timeout=None) as response:
            for event, data in server_events(response):
                if event == "progress" and isinstance(data, dict):
                    yield cast(Progress, data)
                elif event == "done":
                    return

    def wait(self, job_id: int, *, timeout: float | None = None) -> Job:
        """Follow the progress stream until the job finishes; return the finished job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for snapshot in self.progress(job_id):
            if snapshot.get("finished"):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ServiceUnavailable(f"job {job_id}: not finished after {timeout:.0f}s "
                                         f"(state {snapshot.get('state')})")
        return self.get(job_id)


class Finetune:
    def __init__(self, http: Http) -> None:
        self._http = http

    def submit(self, *, model: str, images: Sequence[Path | tuple[str, bytes]], captions: Sequence[str] | None = None,
               instance_prompt: str = "", preset: str = "standard", params: dict[str, Any] | None = None,
               team: str | None = None, adapter_name: str | None = None, attest_licence: bool = False,
               attest_consent: bool = False, priority: int | None = None) -> Job:
        """Upload instance images (paths or ``(name, bytes)``) and queue a fine-tune; ``params`` override the preset."""
        import json

        if not images:
            raise InvalidInput("images: upload at least one instance image")
        files = []
        for item in images:
            name, data = (item.name, item.read_bytes()) if isinstance(item, Path) else item
            files.append(("images", (name, data, "application/octet-stream")))
        form: dict[str, Any] = {"model": model, "instance_prompt": instance_prompt, "preset": preset,
                                "params": json.dumps(params or {}), "attest_licence": str(attest_licence).lower(),
                                "attest_consent": str(attest_consent).lower()}
        if priority is not None:
            form["priority"] = str(priority)
        if team:
            form["team"] = team
        if adapter_name:
            form["adapter_name"] = adapter_name
        if captions is not None:
            form["captions"] = list(captions)
        return cast(Job, self._http.json("POST", "/finetune", data=form, files=files))


class Policies(PolicyData):
    def __init__(self, http: Http) -> None:
        self._http = http

    def status(self) -> dict[str, Any]:
        """The revision in force, the engine, the paths and the last reload error."""
        return cast(dict[str, Any], self._http.json("GET", "/policies"))

    def get(self, path: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("GET", f"/policies/{path}"))

    def evaluate(self, path: str, input: dict[str, Any]) -> Decision:
        """A recorded decision (decision row and audit entry on the server)."""
        return cast(Decision, self._http.json("POST", f"/policies/{path}/evaluate", body={"input": input}))

    def check_prompt(self, prompt: str) -> Decision:
        """The live prompt check: evaluated, not recorded."""
        return cast(Decision, self._http.json("POST", "/policies/prompt/check", body={"prompt": prompt}))

    def protected_names(self, *, q: str = "", category: str | None = None, offset: int = 0, limit: int = 50) -> ProtectedNamesPage:
        """A page of the protected names in force; ``q`` matches any part of the normalised name."""
        params = {"q": q, "category": category, "offset": offset, "limit": limit}
        return cast(ProtectedNamesPage, self._http.json("GET", _NAMES, params=params))

    def add_protected_names(self, names: Sequence[ProtectedName], *, note: str = "") -> ProtectedNamesEdit:
        """Add ``[{"name", "category"}]`` (compliance officers and admins); answers the new revision."""
        return cast(ProtectedNamesEdit, self._http.json("POST", _NAMES, body={"names": list(names), "note": note}))

    def remove_protected_names(self, names: Sequence[str], *, note: str = "") -> ProtectedNamesEdit:
        return cast(ProtectedNamesEdit, self._http.json("POST", f"{_NAMES}/remove", body={"names": list(names), "note": note}))

    def remove_protected_name(self, name: str) -> ProtectedNamesEdit:
        return cast(ProtectedNamesEdit, self._http.json("DELETE", f"{_NAMES}/{quote(name, safe='')}"))

    def recategorise_protected_name(self, name: str, category: str, *, note: str = "") -> ProtectedNamesEdit:
        return cast(ProtectedNamesEdit, self._http.json("PATCH", f"{_NAMES}/{quote(name, safe='')}",
                                                        body={"category": category, "note": note}))


class Quarantine:
    def __init__(self, http: Http) -> None:
        self._http = http

    def list(self, *, status: str = "quarantined", limit: int = 100) -> builtins.list[QuarantinedImage]:
        return cast(builtins.list[QuarantinedImage], self._http.json("GET", "/quarantine",
                                                            params={"status": status, "limit": limit}))

    def image(self, asset_id: int) -> bytes:
        """The flagged image's PNG bytes (the view is audited)."""
        with self._http.stream("GET", f"/quarantine/{asset_id}/image") as response:
            return response.read()

    def release(self, asset_id: int, *, reason: str) -> Review:
        return cast(Review, self._http.json("POST", f"/quarantine/{asset_id}/release", body={"reason": reason}))

    def reject(self, asset_id: int, *, reason: str) -> Review:
        return cast(Review, self._http.json("POST", f"/quarantine/{asset_id}/reject", body={"reason": reason}))


class Assets:
    def __init__(self, http: Http) -> None:
        self._http = http

    def get(self, asset_id: int) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("GET", f"/assets/{asset_id}"))

    def image(self, asset_id: int) -> bytes:
        with self._http.stream("GET", f"/assets/{asset_id}/image") as response:
            return response.read()


class Generations:
    def __init__(self, http: Http) -> None:
        self._http = http

    def create(self, *, model: str, prompt: str, lora: str | None = None, negative_prompt: str | None = None,
               n: int = 1, seed: int = 0, steps: int = 20, guidance: float = 5.0, team: str | None = None) -> Job:
        """Queue a governed generation; a denied prompt raises ``PolicyDenied`` with its reasons, nothing queued."""
        return cast(Job, self._http.json("POST", "/generations", body={
            "model": model, "prompt": prompt, "lora": lora, "negative_prompt": negative_prompt, "n": n, "seed": seed,
            "steps": steps, "guidance": guidance, "team": team}))

    def get(self, job_id: int) -> dict[str, Any]:
        """The generation job and its images (released ones with their ``url``)."""
        return cast(dict[str, Any], self._http.json("GET", f"/generations/{job_id}"))


class Datasets:
    def __init__(self, http: Http) -> None:
        self._http = http

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a synthetic dataset from a spec (the YAML spec's keys); returns ``dataset_id`` and ``job_id``."""
        return cast(dict[str, Any], self._http.json("POST", "/datasets", body=spec))

    def list(self) -> builtins.list[dict[str, Any]]:
        return cast(builtins.list[dict[str, Any]], self._http.json("GET", "/datasets"))

    def get(self, dataset_id: int) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("GET", f"/datasets/{dataset_id}"))

    def card(self, dataset_id: int) -> str:
        """The dataset card (Markdown)."""
        with self._http.stream("GET", f"/datasets/{dataset_id}/card") as response:
            return response.read().decode("utf-8")

    def download(self, dataset_id: int, dest: Path) -> Path:
        """The dataset as a zip (the export is decided by the datasets policy and audited)."""
        return download(self._http, f"/datasets/{dataset_id}/download", Path(dest), {}, f"dataset-{dataset_id}.zip")

    def package(self, dataset_id: int) -> Job:
        """Queue a ``dataset_package`` job (cpu queue): the dataset as one zip with manifest and card."""
        return cast(Job, self._http.json("POST", f"/datasets/{dataset_id}/packages"))

    def download_package(self, dataset_id: int, job_id: int, dest: Path) -> Path:
        """The zip of a finished ``dataset_package`` job (decided by the datasets policy and audited)."""
        return download(self._http, f"/datasets/{dataset_id}/packages/{job_id}", Path(dest), {},
                         f"dataset-{dataset_id}-package.zip")


def _upload(item: Path | tuple[str, bytes]) -> tuple[str, bytes]:
    return (item.name, item.read_bytes()) if isinstance(item, Path) else item


class Copyright:
    def __init__(self, http: Http) -> None:
        self._http = http

    def add(self, files: Sequence[Path | tuple[str, bytes]], *, owner: str, licence: str) -> ReferenceImport:
        """Upload works (paths or ``(name, bytes)``) into the reference index; unreadable files come back
        under ``failures`` while the rest import. When every file fails the server answers 422
        (``InvalidInput`` whose ``reasons`` are the ``{file, reason}`` failures)."""
        if not files:
            raise InvalidInput("files: upload at least one image")
        parts = [("files", (name, data, "application/octet-stream")) for name, data in map(_upload, files)]
        return cast(ReferenceImport, self._http.json("POST", "/copyright/references",
                                                     data={"owner": owner, "licence": licence}, files=parts))

    def queue(self, files: Sequence[Path | tuple[str, bytes]], *, owner: str, licence: str) -> Job:
        """Upload works and queue their indexing as a ``copyright_index`` job (cpu queue) instead of
        importing them within the request; the job's result counts added, duplicate and failed files."""
        if not files:
            raise InvalidInput("files: upload at least one image")
        parts = [("files", (name, data, "application/octet-stream")) for name, data in map(_upload, files)]
        return cast(Job, self._http.json("POST", "/copyright/references/jobs",
                                         data={"owner": owner, "licence": licence}, files=parts))

    def list(self, *, owner: str | None = None, offset: int = 0, limit: int = 100) -> ReferencePage:
        return cast(ReferencePage, self._http.json("GET", "/copyright/references",
                                                   params={"owner": owner, "offset": offset, "limit": limit}))

    def iter(self, *, owner: str | None = None, page_size: int = 500) -> Iterator[Reference]:
        """Every reference in id order, a page at a time."""
        offset: int | None = 0
        while offset is not None:
            page = self.list(owner=owner, offset=offset, limit=page_size)
            yield from page["items"]
            offset = page["next_offset"]


class Screening(ScreeningAdmin):
    def __init__(self, http: Http) -> None:
        self._http = http

    def screen(self, image: Path | tuple[str, bytes], *, team: str | None = None) -> ScreeningVerdict:
        """Screen one image (content scores, copyright matches, verdict), recorded on the server;
        the answer is what ``latentops screen IMAGE --json`` prints."""
        name, data = _upload(image)
        form = {"team": team} if team else {}
        return cast(ScreeningVerdict, self._http.json("POST", "/screen", data=form,
                                                      files=[("file", (name, data, "application/octet-stream"))]))
