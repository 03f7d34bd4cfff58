"""The web app at / driven in a real headless Chromium (Debian's chromium + chromium-driver, via selenium).

One farm and one browser for the module. The tests run in file order and share the farm: the 1,000-task
test comes last so that it does not crowd the list of the others. A screenshot of the dashboard with a
running task is kept in test-artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.e2e.helpers import make_images, slow_image, task_info, wait_status
from tests.support.browser import add_finished_tasks, browser_available, start_chromium
from tests.support.farm import ROOT, TOKEN, Farm, RedisServer, module_farm, wait_until

ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct horse battery"
XSS_NAME = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def wfarm(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A farm with a token and accounts (the node token still sees everything); a 2-slot simulate worker
    whose runs take 4 s, so that a progress bar has time to move."""
    with module_farm(
        redis_server, tmp_path_factory, "webapp", simulate_seconds="4", accounts="true", login_attempts="50"
    ) as started:
        yield started


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[WebDriver]:
    if not browser_available():
        pytest.fail("needs Debian's chromium and chromium-driver: make install (as root) installs them")
    driver = start_chromium(downloads)
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers -----------------------------------------------------------------------------------------------


def open_app(browser: WebDriver, farm: Farm, token: str | None = TOKEN) -> None:
    browser.get(farm.url + "/" + (f"?token={token}" if token is not None else ""))


def dashboard(browser: WebDriver, farm: Farm) -> None:
    open_app(browser, farm)
    until(browser, lambda: browser.execute_script("return document.body.dataset.polled || ''"), "no poll")


def until(browser: WebDriver, predicate: Any, message: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            last = None
        if last:
            return last
        time.sleep(0.1)
    errors = (
        [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        if hasattr(browser, "get_log")
        else []
    )
    raise AssertionError(f"{message} (page errors: {errors})")


def css(browser: WebDriver | WebElement, selector: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, selector)


def row(browser: WebDriver, uuid: str) -> WebElement:
    return css(browser, f'.task[data-uuid="{uuid}"]')


def row_status(browser: WebDriver, uuid: str) -> str:
    return row(browser, uuid).get_attribute("data-status") or ""


def progress(browser: WebDriver, uuid: str) -> float:
    return float(css(row(browser, uuid), "[data-role=progress]").get_attribute("data-progress") or 0)


def task_uuids(farm: Farm) -> list[str]:
    return [t["uuid"] for t in farm.get("/task/list").json()]


def open_row(browser: WebDriver, uuid: str) -> WebElement:
    element = until(browser, lambda: row(browser, uuid), f"no row for {uuid}")
    if "open" not in (element.get_attribute("class") or ""):
        css(element, ".task-row").click()
    return until(browser, lambda: css(row(browser, uuid), ".task-detail"), "the task did not open")


def action(browser: WebDriver, uuid: str, name: str) -> None:
    detail = open_row(browser, uuid)
    until(browser, lambda: css(detail, f'button[data-action="{name}"]'), f"no {name} button").click()


def choose_files(browser: WebDriver, paths: list[str]) -> None:
    css(browser, "#file-input").send_keys("\n".join(paths))
    until(browser, lambda: f"{len(paths)} file(s)" in css(browser, "#file-summary").text, "files not listed")


def drop_files(browser: WebDriver, paths: list[str]) -> None:
    """Drop files on the drop zone as a drag from the desktop does: a drop event carrying the files."""
    browser.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'drag-source';"
        "i.hidden = true; document.body.append(i);"
    )
    css(browser, "#drag-source").send_keys("\n".join(paths))
    browser.execute_script(
        "const dt = new DataTransfer(); for (const f of document.getElementById('drag-source').files) dt.items.add(f);"
        "const zone = document.getElementById('dropzone');"
        "zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));"
        "zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));"
        "document.getElementById('drag-source').remove();"
    )
    until(
        browser,
        lambda: f"{len(paths)} file(s)" in css(browser, "#file-summary").text,
        "dropped files not listed",
    )


def open_options(browser: WebDriver) -> None:
    box = css(browser, ".options-box")
    if box.get_attribute("open") is None:
        css(box, "summary").click()
    until(browser, lambda: css(browser, "#opt-feature-quality"), "options form not built")


def set_text(browser: WebDriver, selector: str, value: str) -> None:
    field = css(browser, selector)
    field.clear()
    field.send_keys(value)


def submit_and_wait_for_new_task(browser: WebDriver, farm: Farm) -> str:
    before = set(task_uuids(farm))
    css(browser, "#start-task").click()
    until(
        browser,
        lambda: "Task created" in css(browser, "#upload-message").text,
        "the task was not created: " + css(browser, "#upload-message").text,
        timeout=30,
    )
    new = set(task_uuids(farm)) - before
    assert len(new) == 1, new
    return new.pop()


def wait_file(folder: Path, name: str, timeout: float = 20) -> Path:
    path = folder / name
    wait_until(
        lambda: path.exists() and path.stat().st_size > 0 and not (folder / (name + ".crdownload")).exists(),
        timeout,
        f"{name} never arrived in {folder}: {os.listdir(folder)}",
    )
    return path


# --- tests -------------------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_for_offline_use(wfarm: Farm) -> None:
    page = requests.get(wfarm.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-cache" and "http" not in page.text.split("<body>")[0].replace(
        "http-equiv", ""
    )  # no CDN: every asset is local
    again = requests.get(wfarm.url + "/", headers={"If-None-Match": page.headers["ETag"]}, timeout=30)
    assert again.status_code == 304
    script = page.text.split('src="')[1].split('"')[0]
    module = requests.get(wfarm.url + script, timeout=30)
    assert module.status_code == 200 and module.headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in module.headers["Cache-Control"]
    missing = requests.get(wfarm.url + script.replace("app.js", "nope.js"), timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()


def test_token_is_asked_for_and_kept_on_every_call(browser: WebDriver, wfarm: Farm) -> None:
    # no token: the login form (accounts are on), a wrong one too
    open_app(browser, wfarm, token=None)
    until(browser, lambda: css(browser, "#login-form"), "no login form without a token")
    open_app(browser, wfarm, token="wrong")
    until(browser, lambda: css(browser, "#login-form"), "no login form with a wrong token")
    # the node token from the URL: the dashboard, and its API calls all carry the token
    dashboard(browser, wfarm)
    until(browser, lambda: "live worker" in css(browser, "#farm").text, "the farm panel is empty")
    calls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.includes('/web/') && /\\/(info|farm|task)/.test(n))"
    )
    assert calls and all(f"token={TOKEN}" in c for c in calls), calls


def test_a_node_without_accounts_asks_for_its_token(browser: WebDriver, farm_factory: Any) -> None:
    plain = farm_factory(workers=0)  # the node token only: no login, a token field
    open_app(browser, plain, token="wrong")
    form = until(browser, lambda: css(browser, "#token-form"), "no token form")
    assert "Invalid authentication token" in form.text and not browser.find_elements(By.ID, "login-form")
    set_text(browser, "#token-input", TOKEN)
    css(form, "button[type=submit]").click()
    until(
        browser, lambda: browser.execute_script("return document.body.dataset.polled || ''"), "no dashboard"
    )
    assert f"token={TOKEN}" in browser.current_url
    until(browser, lambda: "No live worker" in css(browser, "#farm-workers").text, "the farm panel is empty")


def test_submit_with_files_and_options_and_watch_it_complete(
    browser: WebDriver, wfarm: Farm, tmp_path: Path, downloads: Path
) -> None:
    dashboard(browser, wfarm)
    drop_files(browser, make_images(tmp_path / "a", count=3))
    set_text(browser, "#task-name", "Field north")
    open_options(browser)
    Select(css(browser, "#opt-feature-quality")).select_by_visible_text("low")
    css(browser, "#opt-fast-orthophoto").click()
    set_text(browser, "#opt-min-num-features", "4000")
    uuid = submit_and_wait_for_new_task(browser, wfarm)
    progress_seen = float(css(browser, ".upload-progress").get_attribute("data-sent") or 0)
    assert progress_seen >= 3 * 20_000  # the upload bar counted every byte

    info = task_info(wfarm, uuid)
    assert info["name"] == "Field north" and info["imagesCount"] == 3
    given = {o["name"]: o["value"] for o in info["options"]}
    assert given["feature-quality"] == "low" and given["fast-orthophoto"] is True
    assert given["min-num-features"] == 4000

    # the bar moves while it runs, then the row says Completed at 100 %
    until(browser, lambda: 0 < progress(browser, uuid) < 100, "the progress bar never moved", timeout=30)
    until(browser, lambda: row_status(browser, uuid) == "40", "the row never showed COMPLETED", timeout=30)
    assert progress(browser, uuid) == 100
    assert "Completed" in css(row(browser, uuid), "[data-role=status]").text
    # the console followed the run, incrementally
    detail = open_row(browser, uuid)
    until(
        browser,
        lambda: int(css(detail, "[data-role=console]").get_attribute("data-lines") or 0) > 5,
        "the console stayed empty",
    )
    lines = farm_output(wfarm, uuid)
    until(
        browser,
        lambda: css(detail, "[data-role=console]").text.strip().endswith(lines[-1].strip()),
        "the console did not reach the last line",
    )

    # downloads: all.zip and a single asset arrive in the browser's download folder
    all_zip = until(browser, lambda: css(detail, 'a[data-asset="all.zip"]'), "no all.zip link")
    all_zip.click()
    archive = wait_file(downloads, "all.zip")
    assert archive.read_bytes()[:2] == b"PK"
    singles = until(
        browser,
        lambda: detail.find_elements(By.CSS_SELECTOR, ".asset-list a[data-asset]"),
        "no single asset listed",
    )
    name = singles[0].get_attribute("data-asset")
    singles[0].click()
    single = wait_file(downloads, name)
    expected = wfarm.get(f"/task/{uuid}/download/{name}").content
    assert single.read_bytes() == expected


def farm_output(farm: Farm, uuid: str) -> list[str]:
    return farm.get(f"/task/{uuid}/output").json()  # type: ignore[no-any-return]


def test_screenshot_cancel_and_restart_with_changed_options(
    browser: WebDriver, wfarm: Farm, tmp_path: Path
) -> None:
    dashboard(browser, wfarm)
    choose_files(browser, [slow_image(tmp_path, 60), *make_images(tmp_path / "b", count=2)])
    set_text(browser, "#task-name", "Long survey (cancel me)")
    uuid = submit_and_wait_for_new_task(browser, wfarm)
    until(
        browser,
        lambda: row_status(browser, uuid) == "20" and progress(browser, uuid) > 0,
        "the long task never ran",
        timeout=30,
    )
    until(
        browser,
        lambda: css(row(browser, uuid), ".task-detail [data-role=console]").text.strip(),
        "no console for the running task",
    )
    until(
        browser,
        lambda: "1 / 2 used" in css(browser, "#farm-workers").text,
        "the farm panel shows no slot used",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webapp-dashboard-running.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    action(browser, uuid, "cancel")
    until(browser, lambda: row_status(browser, uuid) == "50", "cancel did not show", timeout=15)
    assert task_info(wfarm, uuid)["status"]["code"] == 50
    # cancelled before it completed: nothing to download, and the page does not offer a link
    downloads = css(row(browser, uuid), "[data-role=downloads]")
    until(
        browser, lambda: "No results" in downloads.text, "a download was offered for a task without results"
    )
    assert not downloads.find_elements(By.CSS_SELECTOR, "a")

    # restart it with a changed option: the dialog opens with the task's options filled in
    action(browser, uuid, "restart")
    dialog = until(browser, lambda: css(browser, "dialog.modal[open]"), "no restart dialog")
    assert css(dialog, "#opt-feature-quality").get_attribute("value") == "high"  # the default, unchanged
    Select(css(dialog, "#opt-feature-quality")).select_by_visible_text("ultra")
    browser.save_screenshot(str(ARTIFACTS / "webapp-restart-options.png"))
    css(dialog, 'button[data-action="restart"]').click()
    until(
        browser, lambda: not browser.find_elements(By.CSS_SELECTOR, "dialog.modal[open]"), "the dialog stayed"
    )
    options = {o["name"]: o["value"] for o in task_info(wfarm, uuid)["options"]}
    assert options["feature-quality"] == "ultra"
    assert task_info(wfarm, uuid)["status"]["code"] in (10, 20)
    until(browser, lambda: row_status(browser, uuid) in ("10", "20"), "the restart did not show")
    # the console starts over with the new run (the node cleared the old one)
    console = css(row(browser, uuid), "[data-role=console]")
    until(browser, lambda: "feature_quality: ultra" in console.text, "the new run's console did not show")
    assert "feature_quality: high" not in console.text
    # no reason to wait for it: cancel the restarted run
    wfarm.post("/task/cancel", data={"uuid": uuid})


def test_remove_asks_first(browser: WebDriver, wfarm: Farm) -> None:
    dashboard(browser, wfarm)
    uuid = task_uuids(wfarm)[-1]
    action(browser, uuid, "remove")
    dialog = until(browser, lambda: css(browser, "dialog.modal[open]"), "no confirmation")
    css(dialog, 'button[data-action="cancel"]').click()
    assert uuid in task_uuids(wfarm)
    action(browser, uuid, "remove")
    css(
        until(browser, lambda: css(browser, "dialog.modal[open]"), "no confirmation"),
        'button[data-action="remove"]',
    ).click()
    until(
        browser,
        lambda: not browser.find_elements(By.CSS_SELECTOR, f'.task[data-uuid="{uuid}"]'),
        "row stayed",
    )
    assert uuid not in task_uuids(wfarm)


def test_options_form_refuses_out_of_domain_numbers(browser: WebDriver, wfarm: Farm, tmp_path: Path) -> None:
    dashboard(browser, wfarm)
    choose_files(browser, make_images(tmp_path, count=1))
    open_options(browser)
    set_text(browser, "#opt-mesh-octree-depth", "15")  # integer: 1 <= x <= 14
    error = css(browser, '.option[data-name="mesh-octree-depth"] .field-error')
    until(browser, lambda: error.is_displayed() and "between 1 and 14" in error.text, "no inline message")
    set_text(browser, "#opt-orthophoto-resolution", "abc")  # positive float
    before = task_uuids(wfarm)
    css(browser, "#start-task").click()
    until(browser, lambda: "not valid" in css(browser, "#upload-message").text, "the form was sent anyway")
    assert "Must be a number" in css(browser, '.option[data-name="orthophoto-resolution"] .field-error').text
    assert task_uuids(wfarm) == before and not wfarm.redis.keys("odmfarm:upload:*")
    set_text(browser, "#opt-mesh-octree-depth", "12")
    until(browser, lambda: not error.is_displayed(), "the message stayed once the value was fixed")


# (option, value) pairs across every numeric domain form of ODM's catalog, valid and not
DOMAIN_CASES = (
    [("min-num-features", v) for v in ("-5", "4000", "1.5", "1e3", "abc", "")]
    + [("matcher-neighbors", v) for v in ("-1", "0", "8", "2.0")]
    + [("mesh-octree-depth", v) for v in ("0", "1", "14", "15", "7.5")]
    + [("orthophoto-resolution", v) for v in ("0", "0.1", "-2", "5", ".5", "1e-2", "x")]
    + [("split-overlap", v) for v in ("1.5", "150", "-1")]
    + [("dem-resolution", v) for v in ("-3", "2.5", "nan")]
    + [("crop", v) for v in ("-0.5", "0", "3")]
    + [("cameras", v) for v in ("{}", "{", "[1, 2]")]
    + [("feature-quality", v) for v in ("low", "x", "")]
)


def test_the_forms_domain_checks_agree_with_the_node(browser: WebDriver, wfarm: Farm) -> None:
    """The page's checks (options.js) and the node's (shared/options.py) accept and refuse the same values."""
    dashboard(browser, wfarm)
    script = css(browser, "script[type=module]").get_attribute("src").replace("app.js", "options.js")
    verdicts = browser.execute_async_script(
        "const [url, cases, catalog, done] = arguments;"
        "import(url).then(m => done(cases.map(([n, v]) => m.checkValue(catalog.find(o => o.name === n), v))));",
        script,
        DOMAIN_CASES,
        wfarm.get("/options").json(),
    )
    for (name, value), page in zip(DOMAIN_CASES, verdicts, strict=True):
        answer = wfarm.post(
            "/task/new/init", data={"options": json.dumps([{"name": name, "value": value}])}
        ).json()
        node_accepts = "uuid" in answer
        if node_accepts:
            wfarm.post("/task/remove", data={"uuid": answer["uuid"]})
        assert (page == "") == node_accepts, (name, value, page, answer)


def test_a_failed_file_is_named_and_the_rest_can_start(
    browser: WebDriver, wfarm: Farm, tmp_path: Path
) -> None:
    dashboard(browser, wfarm)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    choose_files(browser, [*make_images(tmp_path, count=2), str(empty)])
    css(browser, "#start-task").click()
    failure = until(
        browser, lambda: css(browser, "#upload-failures li"), "no message for the failed file", timeout=30
    )
    assert "empty.jpg" in failure.text and "empty (0 bytes)" in failure.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#upload-failures li")) == 1
    before = set(task_uuids(wfarm))
    css(browser, "#start-without").click()
    until(browser, lambda: set(task_uuids(wfarm)) - before, "the task was not started without the file")
    (uuid,) = set(task_uuids(wfarm)) - before
    assert task_info(wfarm, uuid)["imagesCount"] == 2


def test_an_upload_that_loses_its_connection_is_tried_again(
    browser: WebDriver, wfarm: Farm, tmp_path: Path
) -> None:
    dashboard(browser, wfarm)
    # the first two upload requests fail as a lost connection does (another origin: the page's CSP blocks
    # them, and the request errors without an answer), then they reach the node again
    browser.execute_script(
        "window.__uploads = 0; const open = XMLHttpRequest.prototype.open;"
        "XMLHttpRequest.prototype.open = function (method, url, ...rest) {"
        "  if (String(url).includes('/task/new/upload/') && ++window.__uploads <= 2) url = 'http://127.0.0.1:9/x';"
        "  return open.call(this, method, url, ...rest); };"
    )
    choose_files(browser, make_images(tmp_path, count=2))
    uuid = submit_and_wait_for_new_task(browser, wfarm)
    assert browser.execute_script("return window.__uploads") == 3  # two failures, then the upload
    assert task_info(wfarm, uuid)["imagesCount"] == 2
    assert not browser.find_elements(By.CSS_SELECTOR, "#upload-failures li")


def test_a_hostile_task_name_shows_as_text(browser: WebDriver, wfarm: Farm, tmp_path: Path) -> None:
    node = wfarm.node()
    task = node.create_task(make_images(tmp_path, count=1), name=XSS_NAME)
    dashboard(browser, wfarm)
    name = until(browser, lambda: css(row(browser, task.uuid), "[data-role=name]"), "no row")
    until(browser, lambda: name.text == XSS_NAME, f"the name is not shown as text: {name.text!r}")
    assert not browser.find_elements(By.CSS_SELECTOR, "#task-list img")
    assert browser.execute_script("return window.__xss") is None
    open_row(browser, task.uuid)
    action(browser, task.uuid, "remove")
    dialog = until(browser, lambda: css(browser, "dialog.modal[open]"), "no confirmation")
    assert XSS_NAME in dialog.text and not dialog.find_elements(By.CSS_SELECTOR, "img")
    css(dialog, 'button[data-action="cancel"]').click()
    assert browser.execute_script("return window.__xss") is None


def test_farm_panel_warns_when_no_worker_can_take_queued_tasks(
    browser: WebDriver, wfarm: Farm, tmp_path: Path
) -> None:
    dashboard(browser, wfarm)
    worker = until(browser, lambda: css(browser, "#farm-workers .worker"), "no worker shown")
    text = worker.text
    for label in ("Slots", "CPU", "Memory", "Free disk", "Engine", "Last seen"):
        assert label in text, text
    assert "simulate" in text and "CPU" in text and "s ago" in text
    assert not css(browser, "#farm-warnings").text

    # stop the worker: its record ages out, and a queued task has nowhere to go
    wfarm.workers[0].stop()
    wait_until(lambda: not wfarm.live_workers(), 15, "the worker stayed live")
    node = wfarm.node()
    task = node.create_task(make_images(tmp_path, count=1), name="waiting")
    try:
        warning = until(browser, lambda: css(browser, "#farm-warnings .warning"), "no warning", timeout=15)
        assert "no worker is alive" in warning.text
        until(
            browser, lambda: "No live worker" in css(browser, "#farm-workers").text, "the old worker stayed"
        )
        # the new task waits (and any that the stopped worker handed back)
        waiting = css(browser, '#farm-queues tr[data-queue="cpu"] td:nth-child(2)').text
        assert int(waiting.split()[0]) >= 1, waiting
    finally:
        wfarm.workers.clear()
        wfarm.start_worker()
    until(browser, lambda: not css(browser, "#farm-warnings").text, "the warning stayed", timeout=20)
    wait_status(wfarm, task.uuid, (40,), timeout=40)


def test_a_user_logs_in_and_sees_only_their_tasks(browser: WebDriver, wfarm: Farm, tmp_path: Path) -> None:
    created = wfarm.post("/auth/register", data={"username": "wendy", "password": PASSWORD}).json()
    assert created.get("success"), created
    browser.execute_script("window.localStorage.clear()")
    open_app(browser, wfarm, token=None)
    until(browser, lambda: css(browser, "#login-form"), "no login form")
    set_text(browser, "#login-user", "wendy")
    set_text(browser, "#login-password", "not it")
    css(browser, "#login-submit").click()
    until(browser, lambda: "Invalid username or password" in css(browser, "#login-form").text, "no refusal")
    set_text(browser, "#login-password", PASSWORD)
    css(browser, "#login-submit").click()
    until(
        browser, lambda: browser.execute_script("return document.body.dataset.polled || ''"), "no dashboard"
    )
    until(browser, lambda: "no task yet" in css(browser, "#task-count").text, "the user sees others' tasks")
    choose_files(browser, make_images(tmp_path, count=2))
    css(browser, "#start-task").click()
    until(
        browser, lambda: "Task created" in css(browser, "#upload-message").text, "the user could not submit"
    )
    until(
        browser,
        lambda: len(browser.find_elements(By.CSS_SELECTOR, ".task")) == 1,
        "no row for the user's task",
    )
    uuid = css(browser, ".task").get_attribute("data-uuid")
    assert wfarm.redis.hget(f"odmfarm:task:{uuid}", "owner") == "wendy"
    # the login token is kept: a reload stays signed in, and Log out forgets it
    browser.refresh()
    until(browser, lambda: css(browser, f'.task[data-uuid="{uuid}"]'), "the reload lost the login")
    css(browser, "#logout").click()
    until(browser, lambda: css(browser, "#login-form"), "log out did not forget the token")


def test_a_thousand_tasks_stay_responsive(browser: WebDriver, wfarm: Farm) -> None:
    uuids = add_finished_tasks(wfarm.redis, 1000)
    started = time.monotonic()
    dashboard(browser, wfarm)
    until(browser, lambda: "of 10" in css(browser, "#task-count").text, "the list did not load")
    until(
        browser, lambda: row_status(browser, uuids[-1]) == "40", "the newest rows did not fill in", timeout=10
    )
    first_render = time.monotonic() - started
    assert len(browser.find_elements(By.CSS_SELECTOR, ".task")) == 50  # one page of rows, not 1,000

    # page on, and a click on a row answers at once
    css(browser, "#page-next").click()
    target = uuids[-60]
    until(browser, lambda: row_status(browser, target), "the second page did not fill in", timeout=10)
    clicked = time.monotonic()
    open_row(browser, target)
    until(browser, lambda: target in css(row(browser, target), ".task-detail").text, "the detail is empty")
    answer = time.monotonic() - clicked
    assert first_render < 15 and answer < 5, (first_render, answer)
    browser.save_screenshot(str(ARTIFACTS / "webapp-1000-tasks.png"))

    # polling stays on the visible rows: a few polls fetch far fewer infos than there are tasks
    time.sleep(6)
    infos = browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => /\\/task\\/[^/]+\\/info/.test(e.name)).length"
    )
    assert infos < 300, infos
