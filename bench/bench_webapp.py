"""Benchmark: the web app with many tasks, in headless Chromium (Debian's chromium + chromium-driver).

`--tasks` finished tasks are written into the farm's Redis (as tests/e2e/test_webapp.py does), then the
page is loaded and measured from the browser:

- load_to_rows_ms: from asking the browser for the page to the first page's 50 rows showing a status
  (the page, its modules, /task/list, 50 /task/{uuid}/info);
- open_row_p50_ms / max: a click on a row to its detail (uuid, options, actions) being shown;
- next_page_p50_ms: "Older" to the next 50 rows showing a status;
- task_list_ms: the duration of the last /task/list request as the browser timed it;
- info_requests_per_poll: /task/{uuid}/info requests per 2.5 s poll once the page settled (only the
  visible rows that may still change, and finished ones every 30 s);
- event_loop_lag_max_ms: the longest delay of a 50 ms timer during 10 s of polling (how long the page
  could not answer a click).

    .venv/bin/python bench/bench_webapp.py [--tasks 1000] [--rows 10]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from harness import BenchError, median, print_result, result, running_farm

from tests.support.browser import add_finished_tasks, browser_available, start_chromium

SETTLE_S = 10


def wait(predicate: Any, timeout: float = 30, what: str = "condition") -> float:
    """Seconds until predicate() is true, polled every 10 ms."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if predicate():
                return time.perf_counter() - started
        except Exception:  # noqa: BLE001 - an element not there yet
            pass
        time.sleep(0.01)
    raise BenchError(f"timed out waiting for {what}")


def filled(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "const rows = document.querySelectorAll('.task');"
            "return rows.length > 0 && [...rows].every(r => r.dataset.status);"
        )
    )


def run(tasks: int = 1000, rows: int = 10) -> dict[str, Any]:
    if not browser_available():
        raise BenchError(
            "needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
        )
    with running_farm(simulate_seconds=1) as farm:
        add_finished_tasks(farm.farm.redis, tasks)
        driver = start_chromium()
        try:
            started = time.perf_counter()
            driver.get(f"{farm.url}/?token={farm.token}")
            wait(lambda: filled(driver), what="the first page of rows")
            load_ms = (time.perf_counter() - started) * 1000

            opens = []
            for index in range(rows):
                row = driver.find_elements("css selector", ".task .task-row")[index * 3 % 50]
                uuid = row.find_element("xpath", "..").get_attribute("data-uuid")
                started = time.perf_counter()
                row.click()
                wait(
                    lambda uuid=uuid: (
                        uuid in driver.find_element("css selector", ".task.open .task-detail").text
                    ),
                    what="a row's detail",
                )
                opens.append((time.perf_counter() - started) * 1000)

            pages = []
            for _ in range(3):
                first = driver.find_element("css selector", ".task").get_attribute("data-uuid")
                started = time.perf_counter()
                driver.find_element("css selector", "#page-next").click()
                wait(
                    lambda first=first: (
                        driver.find_element("css selector", ".task").get_attribute("data-uuid") != first
                        and filled(driver)
                    ),
                    what="the next page",
                )
                pages.append((time.perf_counter() - started) * 1000)

            driver.execute_script(
                "window.__lag = 0; let last = performance.now();"
                "window.__lagTimer = setInterval(() => { const now = performance.now();"
                " window.__lag = Math.max(window.__lag, now - last - 50); last = now; }, 50);"
                "performance.clearResourceTimings(); performance.setResourceTimingBufferSize(100000);"
            )
            time.sleep(SETTLE_S)
            measured = driver.execute_script(
                "clearInterval(window.__lagTimer);"
                "const entries = performance.getEntriesByType('resource');"
                "const lists = entries.filter(e => e.name.includes('/task/list'));"
                "return {lag: window.__lag,"
                " infos: entries.filter(e => /\\/task\\/[^/]+\\/info/.test(e.name)).length,"
                " polls: lists.length, list_ms: lists.length ? lists[lists.length - 1].duration : -1};"
            )
        finally:
            driver.quit()
    polls = max(1, int(measured["polls"]))
    return result(
        "webapp",
        {"tasks": tasks, "rows_opened": rows, "page_size": 50},
        {
            "load_to_rows_ms": load_ms,
            "open_row_p50_ms": median(opens),
            "open_row_max_ms": max(opens),
            "next_page_p50_ms": median(pages),
            "task_list_ms": float(measured["list_ms"]),
            "info_requests_per_poll": round(int(measured["infos"]) / polls, 1),
            "event_loop_lag_max_ms": float(measured["lag"]),
        },
        notes=[
            "browser, API, worker and Redis share the machine; times include selenium's own round trips",
            f"{polls} polls in {SETTLE_S} s after paging, with a task open",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    print_result(run(args.tasks, args.rows))


if __name__ == "__main__":
    main()
