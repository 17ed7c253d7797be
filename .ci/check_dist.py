"""Check the file lists of the sdist and the wheel that ``python -m build`` wrote into DIST.

Usage: ``python .ci/check_dist.py DIST``. Each archive must hold exactly the packages' Python files (``api``,
``solver``, ``workers``, ``configs``), the presets and sample images, the dashboard's files (``api/static``), and
the packaging metadata (README and LICENSE included); anything else (tests, benchmarks, virtual environments, data
or result folders, caches) is an error. The expected files are the checkout's files that git tracks or would track
(``git ls-files --cached --others --exclude-standard``), so a new module or preset is expected without editing this
script. Exit 1 with the differences, else print one line per archive.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "solver", "workers", "configs")


def checkout_files() -> set[str]:
    """What the archives must hold from the checkout: the packages' modules, the presets, the sample images."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *PACKAGES],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    keep = set()
    for name in listed:
        path = PurePosixPath(name)
        if not (REPO / name).is_file():  # deleted in the working tree, not yet committed
            continue
        is_data = (
            path.parts[0] == "configs"
            and (path.suffix == ".yaml" and len(path.parts) == 2 or path.parts[1:2] == ("samples",))
            or path.parts[:2] == ("api", "static")
        )  # the dashboard's page, style sheet and script
        if path.suffix == ".py" or is_data:
            keep.add(name)
    return keep


def _difference(kind: str, found: set[str], expected: set[str]) -> list[str]:
    errors = [f"{kind}: missing {name}" for name in sorted(expected - found)]
    return errors + [f"{kind}: unexpected {name}" for name in sorted(found - expected)]


def check_wheel(wheel: Path, expected: set[str], name: str, version: str) -> list[str]:
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        found = {n for n in archive.namelist() if not n.endswith("/")}
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    metadata_files = {
        f"{info}/{n}" for n in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt", "licenses/LICENSE")
    }
    errors = _difference(wheel.name, found, expected | metadata_files)
    return errors + _check_metadata(wheel.name, metadata)


def check_sdist(sdist: Path, expected: set[str], name: str, version: str) -> list[str]:
    root = f"{name}-{version}"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        found = {m.name.removeprefix(f"{root}/") for m in members}
        metadata = email.parser.Parser().parsestr(archive.extractfile(f"{root}/PKG-INFO").read().decode())
    egg_info = {
        f"{name}.egg-info/{n}"
        for n in (
            "PKG-INFO",
            "SOURCES.txt",
            "dependency_links.txt",
            "entry_points.txt",
            "requires.txt",
            "top_level.txt",
        )
    }
    top = {"PKG-INFO", "README.md", "LICENSE", "pyproject.toml", "setup.cfg"}
    errors = _difference(sdist.name, found, expected | egg_info | top)
    return errors + _check_metadata(sdist.name, metadata)


def _check_metadata(kind: str, metadata) -> list[str]:
    """The README is the long description and the licence is declared."""
    readme_title = (REPO / "README.md").read_text(encoding="utf-8").splitlines()[0]
    errors = []
    if readme_title not in (metadata.get_payload() or ""):
        errors.append(f"{kind}: the README is not the long description")
    if metadata.get("License-Expression") != "BSD-3-Clause" or metadata.get("License-File") != "LICENSE":
        errors.append(
            f"{kind}: License-Expression {metadata.get('License-Expression')!r}, License-File "
            f"{metadata.get('License-File')!r}"
        )
    return errors


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__)
        return 2
    dist = Path(argv[0])
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, version = project["name"], project["version"]
    expected = checkout_files()
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.stderr.write(f"check_dist: {dist} must hold one wheel and one sdist, found {wheels + sdists}\n")
        return 1
    errors = check_wheel(wheels[0], expected, name, version) + check_sdist(sdists[0], expected, name, version)
    if errors:
        sys.stderr.write("".join(f"check_dist: {e}\n" for e in errors))
        return 1
    for archive in (*wheels, *sdists):
        sys.stdout.write(
            f"check_dist: {archive.name}: {len(expected)} package files, README and LICENSE; nothing else\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
