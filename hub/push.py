"""`smartclip-push`: a trained SmartCLIP folder (or a Trainer checkpoint) to a Hub repo, with its model card.

The folder is never uploaded as is. The model and processor are loaded (safetensors only) and saved again into a
staging folder, which therefore holds exactly the weights, `config.json` with `auto_map`, the model code (with the
retrieval helpers the demo's Space uses), the processor and tokenizer files, the card as `README.md` and the plots,
and nothing a checkpoint carries besides (optimizer and scheduler states, RNG states, the pickled
`training_args.bin`, caches). The staging folder goes up in one commit, so a failed upload changes nothing on the
Hub and a re-run completes it.

Nothing is staged that the user did not mean to ship: a checkpoint whose weights do not load exactly (missing,
unexpected or non-finite) is refused, naming them; code pointers (`auto_map`, `custom_pipelines`) that name code
other than this package's (another repo's, which `trust_remote_code=True` would run) are removed with a warning, and
so are credentials the folder's JSON files hold (`secrets`); none reaches the card or the terminal either. Every
request has a timeout (`--timeout`) and the whole upload a deadline (`--deadline`), so an endpoint that stops
answering, drops the connection or trickles is an error naming the step, not a hang. Files go up through the Hub's
LFS protocol, in this process's HTTP client, where those limits hold (hf_xet's uploads run outside it).

    smartclip-push outputs/compare/smartclip me/smartclip-scenes \\
        --results outputs/compare/results.json --plots outputs/compare/*.png
"""

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_session
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import validate_repo_id

from modeling_smartclip import retrieval
from modeling_smartclip.loading import load_model_and_processor

from .card import TEMPLATE_PATH, build_model_card, processor_folder, read_run_record, recorded_results, run_folders
from .code_pointers import strip_foreign_code
from .results import read_results
from .secrets import redact, scrub_json_files
from .space import write_space_folder

# Seconds to connect, and between two bytes sent or received: a stalled server is an error after this.
DEFAULT_TIMEOUT_S = 60.0
# The whole upload's deadline, by default: this many seconds plus the files' size at `MIN_UPLOAD_RATE` bytes per
# second, so that a large upload that keeps moving is not cut, and a server that trickles bytes is.
BASE_DEADLINE_S = 600.0
MIN_UPLOAD_RATE = 100_000


class PushError(OSError):
    """An upload step failed (HTTP error, no connection, no answer, or past the deadline); the message names the step
    and the reason."""


class DeadlineExceeded(Exception):
    """The push ran past its deadline. Not one of the network errors that huggingface_hub retries."""


def list_files(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def stage_model(
    source: str | Path,
    staging_dir: str | Path,
    repo_id: str,
    processor: str | Path | None = None,
    results: str | Path | None = None,
    results_model: str | None = None,
    plots: list[str | Path] = (),
    base_model: str | None = None,
    dataset: str | None = None,
    eval_dataset: str | None = None,
    license: str = "apache-2.0",
    card_template: str | Path = TEMPLATE_PATH,
) -> list[str]:
    """Writes the exact folder `repo_id` gets: model, processor, `README.md` card and `plots/`; returns its files.

    Args:
        source: a folder saved by `SmartCLIPModel.save_pretrained`, or a Trainer `checkpoint-N` folder.
        processor: the folder with the processor files, if neither `source` nor its parent has them.
        results, results_model: the run's results JSON and, if it holds several models, the pushed one's key
            (default: the run's `eval_results.json`, if it wrote one).
        plots: image files shown on the card (copied to `plots/`).
        base_model, dataset: override what the run's `training_args.json` says.
    """
    source, staging_dir = Path(source), Path(staging_dir)
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} is not a saved model folder: it has no config.json.")
    model_type = json.loads((source / "config.json").read_text()).get("model_type")
    if model_type != "smartclip":
        raise ValueError(f"{source} has model_type {model_type!r}; smartclip-push publishes a 'smartclip' model.")
    if not Path(card_template).is_file():
        raise ValueError(f"Model card template {card_template} not found; pass a Jinja2 model card template.")
    plot_paths = [Path(plot) for plot in plots]
    missing = [str(plot) for plot in plot_paths if not plot.is_file()]
    if missing:
        raise ValueError(f"Plot files not found: {missing}.")
    names = [plot.name for plot in plot_paths]
    if len(set(names)) != len(names):
        raise ValueError(f"Plot file names must be distinct, since they share plots/ in the repo; got {names}.")
    measurements, model_key = read_results(results, results_model) if results is not None else (None, None)
    processor_dir = processor_folder(source, processor and Path(processor))

    # safetensors only, the installed classes (the folder's code is never run); every weight exactly as saved
    model, processor = load_model_and_processor(source, processor_dir, strict=True)
    model.save_pretrained(staging_dir)  # the weights, config.json and the model's code files
    processor.save_pretrained(staging_dir)
    # The retrieval encoders too, which the demo's Space loads from the repo's code (nothing imports them on load).
    shutil.copyfile(retrieval.__file__, staging_dir / "retrieval.py")
    strip_foreign_code(staging_dir)
    scrub_json_files(staging_dir)
    for plot in plot_paths:
        (staging_dir / "plots").mkdir(exist_ok=True)
        shutil.copyfile(plot, staging_dir / "plots" / plot.name)

    if results is None:
        measurements = recorded_results(source, model.config)  # the run's eval_results.json, if it wrote one
    run = read_run_record(run_folders(source))
    run.base_model = base_model or run.base_model
    run.dataset = dataset or run.dataset
    card = build_model_card(
        repo_id, model.config, run, measurements, model_key, [f"plots/{name}" for name in names], eval_dataset,
        license, card_template,
    )
    card.save(staging_dir / "README.md")
    return list_files(staging_dir)


def stage_space(staging_dir: str | Path, model_repo_id: str) -> list[str]:
    """Writes the Space folder (a Gradio app serving `model_repo_id`, `space.write_space_folder`); returns its
    files."""
    write_space_folder(Path(staging_dir), model_repo_id)
    return list_files(Path(staging_dir))


def default_deadline(folder: Path) -> float:
    """`BASE_DEADLINE_S` plus the time `folder`'s files take at `MIN_UPLOAD_RATE`."""
    return BASE_DEADLINE_S + sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / MIN_UPLOAD_RATE


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that raises `DeadlineExceeded` at the first chunk past the deadline (a server that sends one
    byte per second never trips the per-read timeout)."""

    def __init__(self, stream: httpx2.SyncByteStream, check):
        self.stream, self.check = stream, check

    def __iter__(self):
        for chunk in self.stream:
            self.check()
            yield chunk

    def close(self) -> None:
        self.stream.close()


@contextlib.contextmanager
def upload_limits(timeout: float, deadline: float):
    """Inside the block, huggingface_hub's shared HTTP client gives up after `timeout` seconds without progress and
    raises `DeadlineExceeded` once `deadline` seconds have passed (before any request, and while reading any
    answer), and files go up through LFS, in that client.

    Its default client waits forever, most `HfApi` calls take no timeout argument, and hf_xet's uploads run outside
    the client. Everything is put back on exit.
    """
    session = get_session()
    ends = time.monotonic() + deadline

    def check(*_) -> None:
        if time.monotonic() > ends:
            raise DeadlineExceeded(f"not finished within the push's deadline of {deadline:g} s (--deadline)")

    def limit_answer(response: httpx2.Response) -> None:
        response.stream = _DeadlineStream(response.stream, check)

    hooks = session.event_hooks
    hooks["request"].append(check)
    hooks["response"].append(limit_answer)
    previous = session.timeout, constants.HF_HUB_DISABLE_XET
    session.timeout, constants.HF_HUB_DISABLE_XET = httpx2.Timeout(timeout), True
    try:
        yield
    finally:
        session.timeout, constants.HF_HUB_DISABLE_XET = previous
        hooks["request"].remove(check)
        hooks["response"].remove(limit_answer)


def _reason(error: BaseException, endpoint: str, timeout: float) -> str:
    """Why a push step failed, from the chain of exceptions huggingface_hub raised (it wraps a failed LFS upload in
    a RuntimeError naming the file)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    uploads = [re.match(r"Error while uploading ('.+') to the Hub", str(cause)) for cause in chain]
    uploading = next((f"uploading {match[1]}: " for match in uploads if match), "")
    for cause in chain:
        if isinstance(cause, DeadlineExceeded):
            return f"{uploading}{cause}"
        if isinstance(cause, httpx2.TimeoutException):
            return f"{uploading}{endpoint} did not answer within {timeout:g} s"
        if isinstance(cause, httpx2.TransportError):
            return f"{uploading}cannot reach {endpoint} ({type(cause).__name__}: {cause})"
        if isinstance(cause, HTTPError):
            return f"{uploading}{cause}"
    return f"{uploading}{type(chain[0]).__name__}: {chain[0]}"


def commit_folder(
    api: HfApi,
    folder: Path,
    repo_id: str,
    repo_type: str = "model",
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SmartCLIP",
    timeout: float = DEFAULT_TIMEOUT_S,
    deadline: float | None = None,
) -> str:
    """Creates the repo (and the branch `revision`) if needed and commits every file of `folder` at once.

    Returns the commit URL. Raises `PushError` naming the step that failed (an HTTP error, no connection, no answer
    within `timeout` seconds, or not done `deadline` seconds after the start, default `default_deadline(folder)`);
    a commit is all or nothing, so a failed one changes nothing.
    """
    step = f"creating the {repo_type} repo {repo_id}"
    try:
        with upload_limits(timeout, default_deadline(folder) if deadline is None else deadline):
            repo_url = api.create_repo(
                repo_id, repo_type=repo_type, private=private, exist_ok=True,
                space_sdk="gradio" if repo_type == "space" else None,
            )
            repo_id = repo_url.repo_id
            if revision not in (None, "main"):
                step = f"creating the branch {revision!r} of {repo_id}"
                api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
            files = list_files(folder)
            step = f"committing {len(files)} files to {repo_id}@{revision or 'main'}"
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
            commit = api.create_commit(
                repo_id, operations, commit_message=commit_message, repo_type=repo_type, revision=revision
            )
    # An HTTP error answer (huggingface_hub's errors derive from HTTPError), a network error, the deadline, or what
    # huggingface_hub makes of them on the LFS path (a RuntimeError naming the file, a ValueError for a bad answer).
    except (httpx2.HTTPError, HTTPError, DeadlineExceeded, RuntimeError, ValueError, OSError) as error:
        raise PushError(f"{step} failed: {_reason(error, api.endpoint, timeout)}") from error
    return commit.commit_url


def push_model(
    api: HfApi,
    source: str | Path,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SmartCLIP model",
    timeout: float = DEFAULT_TIMEOUT_S,
    deadline: float | None = None,
    **stage_kwargs,
) -> tuple[list[str], str]:
    """Stages `source` in a temporary folder (`stage_model`) and commits it to `repo_id` (`commit_folder`); returns
    the files and the commit URL. What `smartclip-push` and `smartclip-train --push_to_hub` upload."""
    with tempfile.TemporaryDirectory(prefix="smartclip-push-") as staging:
        files = stage_model(source, Path(staging), repo_id, **stage_kwargs)
        url = commit_folder(api, Path(staging), repo_id, "model", private, revision, commit_message, timeout, deadline)
    return files, url


def _print_listing(title: str, folder: Path, files: list[str]) -> None:
    print(f"{title} ({folder}):")
    for name in files:
        print(f"  {name}  {(folder / name).stat().st_size} bytes")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartclip-push",
        description=__doc__.split("\n\n")[0],
        epilog="The token comes from `hf auth login` or HF_TOKEN; it is never printed or written.",
    )
    parser.add_argument("model_dir", type=Path, help="folder saved by save_pretrained, or a Trainer checkpoint-N")
    parser.add_argument("repo_id", help="the model repo, e.g. me/smartclip-scenes")
    parser.add_argument("--private", action="store_true", help="create the repo (and Space) private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing); default main")
    parser.add_argument("--commit_message", default="Upload SmartCLIP model", help="the commit's title")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="write the exact folders that would be uploaded to --staging_dir and list them")
    parser.add_argument("--staging_dir", type=Path, default=Path("smartclip-push-dry-run"),
                        help="where --dry-run writes (must be empty or missing); default ./smartclip-push-dry-run")
    parser.add_argument("--space", metavar="SPACE_REPO_ID", help="also push a Gradio Space demo of the model here")
    parser.add_argument("--processor", type=Path, help="folder with the processor files, if not with the model")
    parser.add_argument("--results", type=Path, help="the run's results JSON (e.g. outputs/compare/results.json)")
    parser.add_argument("--results_model", help="the pushed model's key in a results file that holds several models")
    parser.add_argument("--plots", type=Path, nargs="*", default=[], help="plot images to show on the card")
    parser.add_argument("--base_model", help="base checkpoint, if the run's training_args.json does not name it")
    parser.add_argument("--dataset", help="training data, if the run's training_args.json does not name it")
    parser.add_argument("--eval_dataset", help="what the results were measured on (default: the training data)")
    parser.add_argument("--license", default="apache-2.0", help="license id of the card; default apache-2.0")
    parser.add_argument("--card_template", type=Path, default=TEMPLATE_PATH,
                        help="Jinja2 model card template (default: the package's model_card_template.md)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a request may wait to connect or between two bytes (default "
                        f"{DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--deadline", type=float,
                        help=f"seconds the whole upload of a repo may take (default {BASE_DEADLINE_S:g} plus its "
                        f"size at {MIN_UPLOAD_RATE // 1000} kB/s)")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stage_kwargs = dict(
        processor=args.processor, results=args.results, results_model=args.results_model, plots=args.plots,
        base_model=args.base_model, dataset=args.dataset, eval_dataset=args.eval_dataset, license=args.license,
        card_template=args.card_template,
    )
    try:
        for flag, seconds in (("--timeout", args.timeout), ("--deadline", args.deadline)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{flag} {seconds}; expected a number of seconds above 0.")
        for repo_id in filter(None, (args.repo_id, args.space)):
            validate_repo_id(repo_id)  # a ValueError naming the bad id, before any work
            if "/" not in repo_id:  # the card and the Space name the model by this id, so it must be complete
                raise ValueError(f"Repo id {repo_id!r} has no namespace; expected namespace/name, e.g. me/smartclip.")
        if args.dry_run:
            if args.staging_dir.exists() and any(args.staging_dir.iterdir()):
                raise ValueError(f"--staging_dir {args.staging_dir} is not empty; remove it or pass another folder.")
            model_dir = args.staging_dir / "model"
            _print_listing(f"Would upload to model repo {args.repo_id}", model_dir,
                           stage_model(args.model_dir, model_dir, args.repo_id, **stage_kwargs))
            if args.space:
                space_dir = args.staging_dir / "space"
                _print_listing(f"Would upload to Space {args.space}", space_dir, stage_space(space_dir, args.repo_id))
            return 0

        api = HfApi(endpoint=args.endpoint)  # token: HF_TOKEN or the saved login, resolved by huggingface_hub
        private = args.private or None  # None: the Hub's default visibility
        limits = dict(timeout=args.timeout, deadline=args.deadline)
        files, url = push_model(
            api, args.model_dir, args.repo_id, private, args.revision, args.commit_message, **limits, **stage_kwargs
        )
        print(f"Pushed {len(files)} files to {args.repo_id}: {redact(url)}")
        if args.space:
            with tempfile.TemporaryDirectory(prefix="smartclip-space-") as space_dir:
                files = stage_space(space_dir, args.repo_id)
                url = commit_folder(
                    api, Path(space_dir), args.space, "space", private, None, args.commit_message, **limits
                )
            print(f"Pushed {len(files)} files to Space {args.space}: {redact(url)}")
    except PushError as error:
        print(
            f"smartclip-push: {redact(error)}\nNothing was half-published (a commit lands whole or not at all) and "
            f"{args.model_dir} is unchanged; re-run the same command to complete the push (files already on the Hub "
            "are skipped).",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError) as error:
        print(f"smartclip-push: {redact(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
