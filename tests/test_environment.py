"""The three descriptions of the environment agree: pyproject.toml (ranges for library users),
requirements/course.txt (the pinned course environment `make` installs) and environment.yml
(the same pins for conda users)."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TORCH = "2.13.0"


def _pinned(lines, where):
    """{canonical name: Version} from ``name==version`` lines; anything else is an error."""
    pins = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{where}: {line!r} is not pinned (==)"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{where}: {req.name} is listed twice"
        pins[name] = Version(specs[0].version)
    return pins


def course_pins():
    lines = (ROOT / "requirements" / "course.txt").read_text().splitlines()
    return _pinned([ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()],
                   "requirements/course.txt")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pyproject_requirements():
    """Every requirement in pyproject.toml: the dependencies and every extra, with where it is."""
    project = pyproject()
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(f"extra [{extra}]", Requirement(r)) for r in items]
    return reqs


def environment_yml():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_pip_lines():
    deps = environment_yml()["dependencies"]
    sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml must have one pip section"
    return sections[0]


def test_course_pins_satisfy_the_pyproject_ranges():
    pins = course_pins()
    for where, req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({where} in pyproject.toml) is not pinned in course.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"course.txt pins {req.name}=={pins[name]}, outside pyproject's {where} range "
            f"{req.specifier}")


def test_environment_yml_has_the_course_pins():
    lines = environment_pip_lines()
    assert "-e ." in lines, "environment.yml must install minibn itself (-e .)"
    assert _pinned([ln for ln in lines if ln != "-e ."], "environment.yml") == course_pins()


def test_environment_yml_python_is_allowed_by_pyproject():
    pythons = [d for d in environment_yml()["dependencies"]
               if isinstance(d, str) and d.split("=")[0] == "python"]
    assert pythons == ["python=3.11"]
    assert Requirement("python" + pyproject()["requires-python"]).specifier.contains("3.11")
    assert "pip" in environment_yml()["dependencies"]


def test_torch_is_pinned_to_the_cpu_tested_release_everywhere():
    assert course_pins()[canonicalize_name("torch")] == Version(TORCH)
    assert "torch==" + TORCH in environment_pip_lines()
    for where, req in pyproject_requirements():
        if canonicalize_name(req.name) == "torch":
            pinned = [s for s in req.specifier if s.operator in ("==", "===")]
            assert all(s.version == TORCH for s in pinned), f"pyproject {where} pins torch {pinned}"
            assert req.specifier.contains(TORCH), f"pyproject {where} excludes torch {TORCH}"

