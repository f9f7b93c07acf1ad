"""A local Hugging Face hub for tests (issue 32): serves model repos in the hub's layout on
127.0.0.1 (port 0), enough of the hub's HTTP API for `huggingface_hub.snapshot_download` with
`HF_ENDPOINT` pointing here: repo info at a revision, the file tree, and `resolve` (HEAD/GET,
Range for a resumed download, the `X-Repo-Commit` and `ETag` headers). Faults on demand: a file
served corrupted (its ETag still the true sha256, as a bad mirror or disk would), and a
connection dropped after N bytes on a file's first GET."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repo at one commit; `refs` names the branches (`main`) pointing at it."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = ""
    refs: tuple[str, ...] = ("main",)

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1()
            for name in sorted(self.files):
                digest.update(name.encode() + b"\0" + self.files[name])
            self.commit = digest.hexdigest()

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path) -> Repo:
        return cls(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes()
                             for p in sorted(folder.rglob("*")) if p.is_file()})

    def etag(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) \
            else git_blob_oid(data)

    def tree_entry(self, name: str) -> dict[str, object]:
        data = self.files[name]
        entry: dict[str, object] = {"type": "file", "oid": git_blob_oid(data), "size": len(data),
                                    "path": name}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": self.etag(name), "size": len(data), "pointerSize": 134}
        return entry


@dataclass
class Hub:
    """The served repos and the faults to inject; `requests` logs (method, path, Range)."""

    repos: dict[str, Repo] = field(default_factory=dict)
    corrupt: set[tuple[str, str]] = field(default_factory=set)  # (repo, file)
    drop_after: dict[tuple[str, str], int] = field(default_factory=dict)  # first GET only
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: Repo) -> Repo:
        self.repos[repo.repo_id] = repo
        return repo


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    api = re.compile(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?$")
    resolve = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self, code: str) -> None:
            self._send(404, json.dumps({"error": code}).encode(),
                       {"X-Error-Code": code, "Content-Type": "application/json"})

        def _repo_at(self, repo_id: str, revision: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._not_found("RepoNotFound")
                return None
            if revision not in (repo.commit, *repo.refs):
                self._not_found("RevisionNotFound")
                return None
            return repo

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range", "")))
            if match := api.match(path):
                repo = self._repo_at(match[1], match[3])
                if repo is None:
                    return
                if match[2] == "revision":
                    doc: object = {"id": repo.repo_id, "modelId": repo.repo_id,
                                   "sha": repo.commit, "private": False,
                                   "siblings": [{"rfilename": n} for n in sorted(repo.files)]}
                else:
                    doc = [repo.tree_entry(n) for n in sorted(repo.files)]
                self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
            elif match := resolve.match(path):
                repo = self._repo_at(match[1], match[2])
                if repo is None:
                    return
                self._file(repo, match[3])
            else:
                self._not_found("NotFound")

        def _file(self, repo: Repo, name: str) -> None:
            if name not in repo.files:
                self._not_found("EntryNotFound")
                return
            data = repo.files[name]
            if (repo.repo_id, name) in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(name)}"',
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            start = 0
            if (spec := self.headers.get("Range")) and (m := re.match(r"bytes=(\d+)-$", spec)):
                start = int(m[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status = 206 if start else 200
            key = (repo.repo_id, name)
            if self.command == "GET":
                with hub.lock:
                    cut = hub.drop_after.pop(key, None)
                if cut is not None:  # send the headers and N bytes, then hang up
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data) - start))
                    self.end_headers()
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
            self._send(status, data[start:], headers)

    return Handler


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on 127.0.0.1 at a free port."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
