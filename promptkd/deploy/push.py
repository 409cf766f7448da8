"""Upload a model folder to the Hugging Face Hub.

    promptkd push DIR OWNER/NAME [--private] [--branch B] [--message M]

DIR is a model folder (`promptkd export RUN_DIR DIR --format hf`, or `promptkd convert`): it is
read first (config.json, model.safetensors), and a folder holding a pickled file (.pt, .pth,
.bin, .pkl, .tar) is refused, so that what is shared loads without pickles. The repository is
created if it does not exist (`HfApi.create_repo(exist_ok=True)`), then the folder is uploaded
in one commit (`HfApi.upload_folder`). The token is huggingface_hub's own (`hf auth login`, or
HF_TOKEN); --token overrides it.
"""
from __future__ import annotations

import argparse
import logging
import os

from . import hub
from ..errors import UserError
from ..extras import require
from ..io import TMP_PREFIX

logger = logging.getLogger("promptkd")

#: file endings that may hold a pickle; none of them belongs in a shared model folder
PICKLED = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".tar", ".ckpt")


def _hf_api(token: str | None):
    return require("huggingface_hub", "hub", "`promptkd push`").HfApi(token=token)


def check_folder(folder: str) -> dict:
    """The folder's config.json, after checking it reads as a model folder and holds no pickle."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder. {hub.HOW_TO_MAKE}")
    _, config = hub.read_folder(folder)
    pickled = sorted(os.path.relpath(os.path.join(root, name), folder)
                     for root, _, names in os.walk(folder) for name in names if name.lower().endswith(PICKLED))
    if pickled:
        raise UserError(f"{folder} holds files that may be pickles: {', '.join(pickled[:5])}. A model folder is "
                        "shared without them (they can run code when loaded): move them out, then push again.")
    return config


def push(folder: str, repo_id: str, *, private: bool | None = None, branch: str | None = None,
         message: str | None = None, token: str | None = None) -> str:
    """Create `repo_id` (a model repository) if needed and upload `folder` in one commit; returns
    the commit's URL."""
    config = check_folder(folder)
    api = _hf_api(token)
    message = message or (f"PromptKD {config['role']}: {config['method']} on {config['dataset']} "
                          f"(backbone {config['backbone'].get('name')}, fingerprint {config['fingerprint']})")
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if branch:
            api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=branch,
                                 commit_message=message, ignore_patterns=[f"{TMP_PREFIX}*", ".cache/**"])
    except Exception as err:  # huggingface_hub's HTTP / auth errors: say what failed, not a traceback
        if isinstance(err, UserError):
            raise
        raise UserError(f"Uploading {folder} to {repo_id} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                        "(a token with write access: `hf auth login` or HF_TOKEN; --token).") from err
    logger.info("Repository %s", url)
    return getattr(info, "commit_url", str(info))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("folder", help="the model folder (config.json, model.safetensors, README.md)")
    parser.add_argument("repo_id", help="the Hub repository, OWNER/NAME (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--branch", default="", help="upload to this branch (created if missing); default main")
    parser.add_argument("--message", default="", help="the commit message")
    parser.add_argument("--token", default="", help="a Hub token (default: huggingface_hub's, e.g. HF_TOKEN)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = push(args.folder, args.repo_id, private=True if args.private else None, branch=args.branch or None,
               message=args.message or None, token=args.token or None)
    print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return 0
