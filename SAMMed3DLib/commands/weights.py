"""List, download, verify, import and remove SAM-Med3D checkpoints.

Downloaded and imported files live in $SAMMED3D_HOME/weights (default: a per-user data folder) and enter it only
after their SHA256 matched; `--checkpoint NAME` in other commands resolves through this cache. A different file is
never stored under a name that is taken unless `import --replace` says so, and a cached file of a URL without a
published hash is hashed again and shown, not returned as verified.

examples:
  sammed3d weights list
  sammed3d weights download turbo
  sammed3d weights download https://example.org/my_finetuned.pth --sha256 HEX
  sammed3d weights verify ~/Downloads/sam_med3d_turbo.pth
  sammed3d weights import ~/Downloads/sam_med3d_turbo.pth          (offline machines)
  sammed3d weights import finetuned.pth --name liver                (then: --checkpoint liver)
  sammed3d weights import finetuned_v2.pth --name liver --replace   (a new file under a taken name)
  sammed3d weights verify turbo                                     (the cached file, hashed again)
  sammed3d weights remove liver
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "list, download, verify, import and remove checkpoints (the weights cache)"


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the published checkpoints and what is in the cache")
    download = actions.add_parser("download", help="download a checkpoint into the cache (resumes, checks SHA256)")
    download.add_argument("name_or_url", metavar="NAME_OR_URL", help="a name from `weights list`, or a URL")
    download.add_argument("--sha256", metavar="HEX", help="expected SHA256 (needed for URLs without a known hash)")
    verify = actions.add_parser("verify", help="print a file's SHA256 and the published checkpoint it matches")
    verify.add_argument("path", metavar="PATH_OR_NAME", help="a file, or the name of a cached checkpoint")
    verify.add_argument("--sha256", metavar="HEX", help="fail unless the file has this SHA256")
    imp = actions.add_parser("import", help="verify a file obtained elsewhere and copy it into the cache")
    imp.add_argument("path", metavar="PATH", type=Path)
    imp.add_argument("--name", metavar="N", help="name to use with --checkpoint (default: the matching published "
                     "checkpoint, else the file name)")
    imp.add_argument("--sha256", metavar="HEX", help="fail unless the file has this SHA256")
    imp.add_argument("--replace", action="store_true",
                     help="replace a different file the cache holds under the same name")
    remove = actions.add_parser("remove", help="delete a checkpoint from the cache")
    remove.add_argument("name", metavar="NAME", help="a name from `weights list`")


def run(args: argparse.Namespace) -> int:
    from SAMMed3DLib import weights
    from SAMMed3DLib.commands._common import download_progress
    from SAMMed3DLib.errors import ChecksumMismatch, SAMMed3DError

    if args.action == "list":
        print(f"cache: {weights.cache_dir()}")
        for entry in weights.REGISTRY:
            size = f"~{entry.size / 1e6:.0f} MB" if entry.size else "size unknown"
            sha = entry.sha256 or "not published"
            state = "cached" if weights.cached(entry.name) else "not cached"
            print(f"{entry.name:<8} {entry.filename:<24} {size:<14} {state:<10} sha256 {sha}")
            print(f"{'':<8} {entry.description}; {entry.url or entry.page}")
        registered = {e.filename for e in weights.REGISTRY}
        for path in weights.cached_files():
            if path.name not in registered:
                print(f"{path.stem:<8} {path.name:<24} {path.stat().st_size / 1e6:.0f} MB{'':<7} imported")
    elif args.action == "download":
        path = weights.download(args.name_or_url, sha256=args.sha256, on_progress=download_progress())
        print(path)
    elif args.action == "verify":
        path = Path(args.path).expanduser()
        if not path.is_file():
            path = weights.cached_file(args.path)
        digest, match = weights.verify(path, sha256=args.sha256, on_progress=download_progress("verify"))
        what = f"the published {match.name!r} checkpoint" if match else "no published checkpoint"
        print(f"{digest}  {path}  (matches {what})")
    elif args.action == "import":
        try:
            path = weights.import_file(args.path, name=args.name, sha256=args.sha256, replace=args.replace,
                                       on_progress=download_progress("import"))
        except ChecksumMismatch as error:
            raise SAMMed3DError(f"{error}; if it is a different checkpoint, import it under another --name") from None
        print(path)
    else:
        for path in weights.remove(args.name):
            print(f"removed {path}")
    return 0
