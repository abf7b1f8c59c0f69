"""The docs: the site builds strictly (a broken link, a missing anchor or a page left out of
the navigation fails it), what comes from the code is current, every alert rule links to
its runbook page, the README stays a front page, and no page speaks of how the work was
organised."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"
CONFIG = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
RULES = ROOT / "deploy" / "prometheus" / "slipguard-alerts.yml"
RULE_CRD = ROOT / "deploy" / "k8s" / "base" / "generated" / "prometheusrule.yaml"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    if not MKDOCS.exists():
        pytest.fail(f"mkdocs is not installed in {sys.executable}: pip install -e '.[test]' (pyproject pins it)")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(config), "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_generated_pages_and_pictures_are_current() -> None:
    from docs import generate

    assert generate.stale() == [], "run `make docs` (python -m docs.generate) and commit what it writes"


def test_the_site_builds_strictly(tmp_path) -> None:
    done = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "runbooks" / "worker-down" / "index.html").exists()
    assert (tmp_path / "site" / "concepts" / "img" / "deadline.svg").exists()


def test_a_page_left_out_of_the_navigation_or_a_broken_link_fails_the_build(tmp_path) -> None:
    nav = [item for item in CONFIG["nav"] if item != {"Benchmarks": "benchmarks.md"}]
    assert len(nav) == len(CONFIG["nav"]) - 1
    left_out = tmp_path / "left-out.yml"
    left_out.write_text(yaml.safe_dump({"INHERIT": str(ROOT / "mkdocs.yml"), "docs_dir": str(DOCS),
                                        "hooks": [str(DOCS / "generate.py")], "nav": nav}))
    done = _build(left_out, tmp_path / "a")
    assert done.returncode != 0 and "benchmarks.md" in done.stderr, done.stderr[-2000:]


def _alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def runbook_slug(alert: str) -> str:
    """SlipguardJoinCommitsAborting -> join-commits-aborting."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alert.removeprefix("Slipguard")).lower()


@pytest.mark.parametrize("source", [RULES, RULE_CRD], ids=["prometheus", "PrometheusRule"])
def test_every_alert_links_to_its_runbook_page_in_the_navigation(source: Path) -> None:
    loaded = yaml.safe_load(source.read_text())
    alerts = _alerts(loaded["groups"] if "groups" in loaded else loaded["spec"]["groups"])
    nav = _nav_pages(CONFIG["nav"])
    assert len(alerts) >= 9
    for name, rule in alerts.items():
        slug = runbook_slug(name)
        page = DOCS / "runbooks" / f"{slug}.md"
        assert rule["annotations"].get("runbook_url") == f"{CONFIG['site_url']}runbooks/{slug}/", name
        assert page.exists(), f"{name} has no runbook page: write docs/runbooks/{slug}.md"
        assert page.read_text().startswith(f"# {name}\n"), f"{page} is not {name}'s page"
        assert f"runbooks/{slug}.md" in nav, f"{page} is not in mkdocs.yml's nav"


def test_every_runbook_page_belongs_to_an_alert() -> None:
    slugs = {runbook_slug(name) for name in _alerts(yaml.safe_load(RULES.read_text())["groups"])}
    pages = {p.stem for p in (DOCS / "runbooks").glob("*.md")} - {"index"}
    assert pages == slugs


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://", "../")):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


QUICK_START = ("make demo   # the main job on the local stack: Kafka + PostgreSQL + join + writer + traffic, checked "
               "summary\nmake test   # the whole test suite (unit, property, and integration on the real Kafka and "
               "PostgreSQL)\n")


def test_ci_runs_the_readmes_test_command() -> None:
    assert QUICK_START in (ROOT / "README.md").read_text(), "the README's quick start changed"
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


# Upstream projects' issue numbers are citations (librdkafka issue 5040); this project's
# issues and the sessions that worked on it are not for readers.
UPSTREAM = ("librdkafka", "faust-streaming", "Kafka", "KIP")
WORK_WORDS = re.compile(r"\b(?:this|the previous|previous|the next|next|earlier|later|work) sessions?\b"
                        r"|\bsessions? (?:up to|of work)", re.IGNORECASE)


def test_no_page_speaks_of_the_projects_issues_or_work_sessions() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    found = []
    for page in pages:
        text = page.read_text()
        for m in re.finditer(r"(\S+\s+)?\b[Ii]ssues? (\d+)", text):
            if not (m.group(1) or "").strip().lstrip("(").startswith(UPSTREAM):
                found.append(f"{page.relative_to(ROOT)}: {m.group(0)!r}")
        found += [f"{page.relative_to(ROOT)}: {m.group(0)!r}" for m in WORK_WORDS.finditer(text)]
    assert found == []
