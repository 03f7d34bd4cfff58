"""Headless Chromium for the web app's tests and benchmark: Debian's chromium + chromium-driver, via selenium."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def start_chromium(downloads: Path | None = None, width: int = 1440, height: int = 1000) -> Any:
    """A headless Chromium (selenium WebDriver); downloads land in `downloads` without a prompt."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    driver.set_page_load_timeout(30)
    return driver


def add_finished_tasks(redis: Any, count: int) -> list[str]:
    """`count` finished tasks (completed, failed, canceled in turn) written straight into the farm's Redis,
    with the keys and fields the task store writes; oldest first, as /task/list orders them."""
    import json
    import time
    import uuid as uuidlib

    now = int(time.time() * 1000)
    uuids = [str(uuidlib.uuid4()) for _ in range(count)]
    first = redis.incrby("odmfarm:seq", count) - count
    pipe = redis.pipeline(transaction=False)
    for i, uuid in enumerate(uuids):
        status = (40, 30, 50)[i % 3]
        pipe.hset(
            f"odmfarm:task:{uuid}",
            mapping={
                "uuid": uuid,
                "name": f"bulk task {i:04d}",
                "status": str(status),
                "runId": "r",
                "attempt": "1",
                "progress": "100" if status == 40 else "37",
                "processingTime": str(1000 + i),
                "options": "[]",
                "inputs": json.dumps(["a.jpg"]),
                "imagesCount": "1",
                "inputBytes": "100",
                "dateCreated": str(now - (count - i) * 1000),
                "committedAt": str(now),
                "queue": "cpu",
                **({"errorMessage": "bulk failure"} if status == 30 else {}),
            },
        )
        pipe.zadd("odmfarm:tasks", {uuid: first + i + 1})
        pipe.zadd("odmfarm:finished", {uuid: time.time()})
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return uuids
