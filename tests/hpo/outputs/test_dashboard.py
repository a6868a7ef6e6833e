"""``python -m hpo.dashboard``: the server on a small finished study, over HTTP and in Chromium.

The browser test drives Debian's chromium (``/usr/bin/chromium``, installed by
``.ci/deps.d/chromium.sh``) with Playwright; Playwright never downloads a browser here. Its
screenshots go to ``runs/screenshots/`` (printed; see them with ``pytest -s``) and are copied to
``/tmp/screenshots``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.outputs import dashboard
from tests.hpo.outputs.test_artifacts import make_finished_study
from tests.sweep_files import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "runs" / "screenshots"
SCREENSHOT_COPIES = Path("/tmp/screenshots")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def poll_trials(base: str, sid: int, done: Any, timeout: float = 20.0) -> list[dict]:
    """The dashboard's trial list, polled until ``done(trials)`` (it caches for 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        trials = get_json(f"{base}/api/studies/{sid}")["trials"]
        if done(trials) or time.monotonic() > deadline:
            return trials
        time.sleep(0.25)


@contextmanager
def dashboard_server(study_dir: Path, log_file: Path, *extra: str) -> Iterator[str]:
    """``python -m hpo.dashboard study_dir`` on a free port; yields its base URL."""
    port = free_port()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.dashboard", str(study_dir), "--port", str(port),
             *extra], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited {proc.returncode}: {log_file.read_text()}")
            try:
                get_json(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not answer in 60 s: {log_file.read_text()}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def chromium_page(profile: Path) -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page with a fresh profile; yields it and the JS errors it logs."""
    # A missing browser is a set-up failure, never a skip: `make test` installs it.
    assert CHROMIUM.exists(), f"{CHROMIUM} missing: run `bash .ci/system-deps.sh` as root"
    from playwright import sync_api
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.set_default_timeout(20_000)
            yield page, errors
        finally:
            context.close()


def save_screenshot(page: Any, name: str, **kwargs: Any) -> Path:
    """Screenshot to ``runs/screenshots/name`` and a copy in ``/tmp/screenshots``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), **kwargs)
    try:
        SCREENSHOT_COPIES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOT_COPIES / name)
    except OSError:
        pass
    print(f"screenshot: {path} (copy in {SCREENSHOT_COPIES})")
    return path


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "dash-study"
    make_finished_study(folder)
    return folder


def test_cli_refuses_a_folder_without_a_study(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert dashboard.main([str(tmp_path), "--port", "0"]) == 2
    assert "no study database here" in capsys.readouterr().err
    (tmp_path / "optuna.db").write_bytes(b"")  # an empty SQLite file crashes the dashboard
    assert dashboard.main([str(tmp_path), "--port", "0"]) == 2
    assert "no study database here" in capsys.readouterr().err


def test_cli_finds_the_study_by_folder_name(study_dir: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    url = dashboard.storage_url(study_dir)
    assert dashboard.find_study(url, study_dir).study_name == "dash-study"
    assert dashboard.main([str(study_dir), "--study", "other", "--port", "0"]) == 2
    assert "no study named 'other'" in capsys.readouterr().err


def test_server_is_local_read_only_and_live(study_dir: Path, tmp_path: Path) -> None:
    """Bound to 127.0.0.1, refuses writes, and shows trials the driver adds while it runs."""
    study_dir = shutil.copytree(study_dir, tmp_path / "dash-study")  # this test adds trials
    log = tmp_path / "dashboard.log"
    with dashboard_server(study_dir, log) as base:
        study = optuna.load_study(study_name="dash-study",
                                  storage=dashboard.storage_url(study_dir))
        sid = study._study_id
        assert f"http://127.0.0.1:{base.rsplit(':', 1)[1]}/dashboard/studies/{sid}" \
            in log.read_text()
        before = get_json(f"{base}/api/studies/{sid}")["trials"]
        assert len(before) == len(study.trials)
        request = urllib.request.Request(f"{base}/api/studies/{sid}/note", method="PUT",
                                         data=b'{"version": 1, "body": "x"}')
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        # The driver (here: this process) records a new trial while the dashboard runs.
        trial = study.ask({"rank": optuna.distributions.CategoricalDistribution([2, 4, 8])})
        trial.report(21.5, 4)
        running = poll_trials(base, sid, lambda ts: len(ts) > len(before))
        assert len(running) == len(before) + 1 and running[-1]["state"] == "Running"
        study.tell(trial, 23.0)
        done = poll_trials(base, sid, lambda ts: ts[-1]["state"] != "Running")[-1]
        assert done["state"] == "Complete" and done["values"] == [23.0]


def test_dashboard_in_chromium_shows_trials_and_artifact_images(study_dir: Path,
                                                                tmp_path: Path) -> None:
    """Open the study, see its trials, open the best trial and see its rung grids load."""
    study = optuna.load_study(study_name="dash-study", storage=dashboard.storage_url(study_dir))
    best = study.best_trial
    with dashboard_server(study_dir, tmp_path / "dashboard.log") as base, \
            chromium_page(tmp_path / "profile") as (page, errors):
        page.goto(f"{base}/dashboard")
        page.get_by_text("dash-study").first.click()
        page.wait_for_url(f"**/dashboard/studies/{study._study_id}")
        page.get_by_text("Best Trial").first.wait_for()
        page.locator(".js-plotly-plot").first.wait_for()
        save_screenshot(page, "dashboard-study.png", full_page=True)

        page.goto(f"{base}/dashboard/studies/{study._study_id}/trials")
        for t in study.trials:
            page.get_by_text(f"Trial {t.number}", exact=True).first.wait_for()
        page.get_by_text(f"Trial {best.number}", exact=True).first.click()
        page.get_by_text(f"Trial {best.number}: COMPLETE").wait_for()  # the note
        images = page.locator(f"img[src*='/artifacts/{study._study_id}/{best._trial_id}/']")
        images.first.wait_for()
        assert images.count() == len(best.intermediate_values)
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=images.nth(i).element_handle())
        assert page.get_by_text(f"step-{best.user_attrs['best_step']:06d}_clip-").count() >= 1
        page.get_by_text("Artifacts", exact=True).scroll_into_view_if_needed()
        save_screenshot(page, "dashboard-trial-artifacts.png")
        page.goto(base + images.last.get_attribute("src"))  # the grid itself, full size
        save_screenshot(page, "dashboard-artifact-full-size.png")
    assert errors == []
