"""Download the full NIH ChestX-ray14 release (112,120 images, about 45 GB; needs internet).

    python download_data.py                              # all 12 archives into $CXR_DATA_DIR or data/nih
    python download_data.py --data-dir /big/disk/nih --archives 1 2   # a subset, by archive number
    python download_data.py --keep-archives              # keep the .tar.gz files after extraction

Safe to interrupt and re-run: finished archives are skipped. The label file
Data_Entry_2017_v2020.csv and BBox_List_2017.csv have no direct link; download them by hand from
https://nihcc.app.box.com/v/ChestXray-NIHCC into the data directory and run this again to gzip them.
Then point the project at the folder: export CXR_DATA_DIR=<data dir>.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from cxr import config
from cxr.download import IMAGE_ARCHIVE_URLS, ArchiveError, DownloadError, download_release

DEFAULT_DOWNLOAD_DIR = config.PROJECT_ROOT / "data" / "nih"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(config.DATA_DIR_VARIABLE) or DEFAULT_DOWNLOAD_DIR),
        help=f"target folder (default: ${config.DATA_DIR_VARIABLE}, else data/nih in this repository)",
    )
    parser.add_argument(
        "--archives",
        type=int,
        nargs="+",
        choices=sorted(IMAGE_ARCHIVE_URLS),
        metavar="N",
        help="archive numbers to fetch, 1..12 (default: all); each is about 4 GB",
    )
    parser.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after extraction")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the download; return the process exit status (1 with a message on failure)."""
    args = parse_args(argv)
    try:
        download_release(args.data_dir, archives=args.archives, keep_archives=args.keep_archives)
    except (DownloadError, ArchiveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    if args.data_dir.resolve() != config.chosen_data_dir().resolve():  # else the project would not find it
        print(f"Done. The project reads {config.chosen_data_dir()}; point it at this folder with\n"
              f"    export {config.DATA_DIR_VARIABLE}={shlex.quote(str(args.data_dir.resolve()))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
