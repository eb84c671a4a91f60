"""A minimal Hugging Face Hub-compatible HTTP server, so that tests exercise the real `huggingface_hub` client offline.

It answers what huggingface_hub 2.x (`HfApi`, `hf_hub_download`, `snapshot_download`) and transformers'
`from_pretrained` call to create a repo or a branch, validate a README's metadata, pre-upload and commit files, read
repo info and trees, and resolve (HEAD) and download (GET) files. Files are committed inline ("regular" upload mode,
base64 in the NDJSON commit body), or, for paths ending in one of `lfs_suffixes`, through the LFS protocol (the batch
endpoint, a basic-transfer PUT of the bytes, then an `lfsFile` line in the commit); the Xet protocol is not
implemented. Uploads can be made to stall, drop the connection or answer one byte per second. Only loopback is bound;
blobs live in a given storage folder; the server stops at `stop()` (or when its context closes) and by itself after
`lifetime_s`.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"

REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
ROUTES = [  # (method, pattern on the raw path, handler name); revisions arrive URL-quoted without "/".
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", rf"/api/(?P<api_type>models|datasets|spaces)/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/(?P<api_type>models|datasets|spaces)/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/(?P<api_type>models|datasets|spaces)/{REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
    ("POST", rf"/(?P<prefix>datasets/|spaces/)?{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET", rf"/api/(?P<api_type>models|datasets|spaces)/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/(?P<api_type>models|datasets|spaces)/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("HEAD", rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob, which the Hub reports as a regular file's `oid` and `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` huggingface_hub maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class CommitRecord:
    oid: str
    branch: str
    message: str
    added: list[str]
    deleted: list[str]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    trees: dict[str, dict[str, str]] = field(default_factory=dict)  # commit oid -> {path: blob id}
    history: list[CommitRecord] = field(default_factory=list)


class HubServer:
    """The server and its state. Use as a context manager, or call `start()` and `stop()`.

    `token`: when set, writes (and reads of private repos) need `Authorization: Bearer <token>`.
    `fail_commits`: the next this many commit requests are answered HTTP 500 and change nothing.
    `stall_commits`: the next this many commit requests are never answered and change nothing (the connection is
    held open until the server stops), as a Hub that stopped responding mid-push.
    `lfs_suffixes`: paths ending in one of these are uploaded through LFS (default: none, every file inline).
    `upload_faults`: what the next LFS uploads (PUTs) meet, one entry each, taken in order: `"stall"` (the bytes are
    read, no answer comes until the server stops), `"drop"` (the connection is closed without an answer) or
    `"trickle"` (the answer comes one byte per second, for ten minutes).
    `requests`: `(method, path)` of every request, in order.
    """

    def __init__(
        self, storage_dir: Path, token: str | None = None, max_body_bytes: int = 64 << 20, lifetime_s: float = 600
    ):
        self.storage_dir = Path(storage_dir)
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.lifetime_s = lifetime_s
        self.fail_commits = 0
        self.stall_commits = 0
        self.lfs_suffixes: tuple[str, ...] = ()
        self.upload_faults: list[str] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded and not yet committed
        self.stopped = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # ----- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        (self.storage_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)  # bounded even if a test never tears down
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self.stopped.set()  # releases stalled requests
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----- inspection, for test assertions ------------------------------------------------------------------------

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at `revision` of a repo."""
        repo = self.repos[(repo_type, repo_id)]
        return {path: self._blob(blob_id) for path, blob_id in repo.trees[self._resolve(repo, revision)].items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[CommitRecord]:
        """The commits made through the commit endpoint, oldest first (the repo's initial commit is not listed)."""
        return list(self.repos[(repo_type, repo_id)].history)

    # ----- storage ------------------------------------------------------------------------------------------------

    def _blob(self, blob_id: str) -> bytes:
        return (self.storage_dir / "blobs" / blob_id).read_bytes()

    def _store(self, content: bytes) -> str:
        blob_id = git_blob_id(content)
        (self.storage_dir / "blobs" / blob_id).write_bytes(content)
        return blob_id

    def _repo(self, api_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((API_TYPES.get(api_type, api_type), repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(HTTPStatus.NOT_FOUND, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.trees:
            return revision
        raise HubError(HTTPStatus.NOT_FOUND, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _commit(self, repo: Repo, branch: str, message: str, files: dict[str, bytes], deleted: list[str]) -> str:
        parent = repo.branches.get(branch)
        tree = dict(repo.trees.get(parent, {}))
        for path in deleted:
            tree = {p: b for p, b in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        tree.update({path: self._store(content) for path, content in files.items()})
        oid = hashlib.sha1(json.dumps([parent, message, sorted(tree.items())]).encode()).hexdigest()
        repo.trees[oid] = tree
        repo.branches[branch] = oid
        return oid


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 30  # seconds a connection may sit idle or stall mid-request

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format, *args) -> None:  # the request list replaces stderr logging
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ----- plumbing -----------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.hub.requests.append((method, split.path))
        self.query = parse_qs(split.query)
        try:
            body = self._read_body()
            for route_method, pattern, name in ROUTES:
                match = re.fullmatch(pattern, split.path)
                if route_method == method and match:
                    if name == "commit" and self._take_stall():
                        self.hub.stopped.wait(self.hub.lifetime_s)  # outside the lock: other requests are served
                        self.close_connection = True
                        return
                    if name == "lfs_upload" and self._upload_fault(match["oid"], body):
                        return
                    with self.hub.lock:
                        getattr(self, f"serve_{name}")(body, **match.groupdict())
                    return
            raise HubError(HTTPStatus.NOT_FOUND, f"{method} {split.path} is not served by the test Hub")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self._send(error.status, json.dumps({"error": error.message}).encode(), headers, method == "HEAD")

    def _upload_fault(self, oid: str, body: bytes) -> bool:
        """Plays the next of `upload_faults` on this upload, outside the lock; False when there is none."""
        with self.hub.lock:
            fault = self.hub.upload_faults.pop(0) if self.hub.upload_faults else None
        if fault is None:
            return False
        self.close_connection = True
        if fault == "stall":
            self.hub.stopped.wait(self.hub.lifetime_s)
        elif fault == "trickle":  # a valid, complete answer, were the client to wait ten minutes for it
            answer = b" " * 600
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            for byte in answer:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up
                    break
                if self.hub.stopped.wait(1.0):
                    break
        elif fault != "drop":
            raise ValueError(f"Unknown upload fault {fault!r}; expected stall, drop or trickle.")
        return True

    def _take_stall(self) -> bool:
        with self.hub.lock:
            if self.hub.stall_commits > 0:
                self.hub.stall_commits -= 1
                return True
            return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > self.hub.max_body_bytes:
                self.close_connection = True
                raise HubError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Body of {length} bytes is over the limit")
            body = self.rfile.read(length)
        if len(body) > self.hub.max_body_bytes:
            raise HubError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Body of {len(body)} bytes is over the limit")
        return body

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode())

    def _authorized(self) -> bool:
        return self.hub.token is None or self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HubError(HTTPStatus.UNAUTHORIZED, "Invalid credentials in Authorization header")

    # ----- endpoints ----------------------------------------------------------------------------------------------

    def serve_create_repo(self, body: bytes) -> None:
        self._require_auth()
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            self._json({"error": "You already created this repo", "url": url}, HTTPStatus.CONFLICT)
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_type, repo_id, private)
        self.hub._commit(repo, "main", "initial commit", {".gitattributes": INITIAL_GITATTRIBUTES}, [])
        self.hub.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id})

    def serve_validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            self._json({"errors": [{"message": f"Invalid YAML: {error}"}]}, HTTPStatus.BAD_REQUEST)
            return
        if not isinstance(metadata, dict):
            self._json({"errors": [{"message": "Metadata must be a mapping"}]}, HTTPStatus.BAD_REQUEST)
            return
        self._json({"errors": [], "warnings": []})

    def serve_whoami(self, body: bytes) -> None:
        self._require_auth()
        self._json({"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})

    def serve_preupload(self, body: bytes, api_type: str, repo_id: str, rev: str) -> None:
        self._require_auth()
        repo = self.hub._repo(api_type, repo_id, authorized=True)
        tree = repo.trees[self.hub._resolve(repo, unquote(rev))]
        files = [
            {
                "path": item["path"],
                "uploadMode": "lfs" if item["path"].endswith(self.hub.lfs_suffixes) else "regular",
                "shouldIgnore": False,
                "oid": tree.get(item["path"]),
            }
            for item in json.loads(body)["files"]
        ]
        self._json({"files": files, "commitOid": repo.branches.get(unquote(rev))})

    def serve_commit(self, body: bytes, api_type: str, repo_id: str, rev: str) -> None:
        self._require_auth()
        repo = self.hub._repo(api_type, repo_id, authorized=True)
        branch = unquote(rev)
        if branch not in repo.branches:
            raise HubError(HTTPStatus.NOT_FOUND, f"Invalid rev id: {branch}", "RevisionNotFound")
        if self.hub.fail_commits > 0:
            self.hub.fail_commits -= 1
            raise HubError(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Error (the test Hub was told to fail this commit)")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise HubError(HTTPStatus.BAD_REQUEST, "The commit has no header line")
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            raise HubError(HTTPStatus.PRECONDITION_FAILED, f"Parent commit {parent} is not the head of {branch}")
        files, deleted = {}, []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    raise HubError(HTTPStatus.UNPROCESSABLE_ENTITY, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.hub.lfs_objects[value["oid"]]
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key != "header":
                raise HubError(HTTPStatus.UNPROCESSABLE_ENTITY, f"Commit operation {key!r} is not served here")
        oid = self.hub._commit(repo, branch, header["summary"], files, deleted)
        repo.history.append(CommitRecord(oid, branch, header["summary"], sorted(files), deleted))
        prefix = URL_PREFIXES[repo.repo_type]
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{oid}"})

    def serve_lfs_batch(self, body: bytes, prefix: str | None, repo_id: str) -> None:
        self._require_auth()
        self.hub._repo({"datasets/": "dataset", "spaces/": "space"}.get(prefix, "model"), repo_id, authorized=True)
        objects = []
        for item in json.loads(body)["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{item['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def serve_lfs_upload(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(HTTPStatus.BAD_REQUEST, f"The uploaded bytes do not hash to {oid}")
        self.hub.lfs_objects[oid] = body
        self._send(HTTPStatus.OK, b"")

    def serve_create_branch(self, body: bytes, api_type: str, repo_id: str, rev: str) -> None:
        self._require_auth()
        repo = self.hub._repo(api_type, repo_id, authorized=True)
        branch = unquote(rev)
        if branch in repo.branches:
            raise HubError(HTTPStatus.CONFLICT, f"Reference refs/heads/{branch} already exists")
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self.hub._resolve(repo, start)
        self._json({})

    def serve_repo_info(self, body: bytes, api_type: str, repo_id: str, rev: str | None) -> None:
        repo = self.hub._repo(api_type, repo_id, self._authorized())
        oid = self.hub._resolve(repo, unquote(rev or "main"))
        tree = repo.trees[oid]
        info = {
            "id": repo_id,
            "sha": oid,
            "private": repo.private,
            "lastModified": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(tree)],
        }
        if repo.repo_type == "space":
            info["sdk"] = "gradio"
        self._json(info)

    def serve_tree(self, body: bytes, api_type: str, repo_id: str, rev: str, path: str | None) -> None:
        repo = self.hub._repo(api_type, repo_id, self._authorized())
        tree = repo.trees[self.hub._resolve(repo, unquote(rev))]
        base = unquote(path or "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for file_path, blob_id in sorted(tree.items()):
            if base and not file_path.startswith(base + "/"):
                continue
            relative = file_path[len(base) + 1 :] if base else file_path
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([base] if base else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                size = len(self.hub._blob(blob_id))
                entries.append({"type": "file", "oid": blob_id, "size": size, "path": file_path})
        self._json(entries)

    def serve_resolve(self, body: bytes, prefix: str | None, repo_id: str, rev: str, path: str) -> None:
        repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(prefix, "model")
        repo = self.hub._repo(repo_type, repo_id, self._authorized())
        oid = self.hub._resolve(repo, unquote(rev))
        blob_id = repo.trees[oid].get(unquote(path))
        if blob_id is None:
            raise HubError(HTTPStatus.NOT_FOUND, "Entry not found", "EntryNotFound", commit=oid)
        content = self.hub._blob(blob_id)
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{blob_id}"', "X-Repo-Commit": oid}
        self._send(HTTPStatus.OK, content, headers, head=self.command == "HEAD")
