"""The README's webhook verification snippet, run as written, accepts what the workers sign and refuses a
changed body, another secret and a stale signature."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from glai_common import webhooks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _readme_verify() -> Any:
    block = re.search(r"```python\n(import hashlib, hmac, time\n\ndef verify\(.*?)```", README, re.S)
    assert block, "the README's verify() snippet is gone"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["verify"]


def test_the_documented_check_verifies_real_signatures() -> None:
    verify = _readme_verify()
    body = b'{"event":"job.succeeded","job":{"id":"x"}}'
    header = webhooks.sign("whsec_abc", body)
    assert verify("whsec_abc", body, header)
    assert not verify("whsec_abc", body + b" ", header)
    assert not verify("whsec_other", body, header)
    assert not verify("whsec_abc", body, webhooks.sign("whsec_abc", body, int(time.time()) - 3600))
    for check in (verify, webhooks.verify):  # the library's own check agrees
        assert check("whsec_abc", body, header)


def test_every_documented_setting_exists() -> None:
    from glai_common.settings import Settings

    names = set(re.findall(r"`GLAI_((?:WEBHOOK|METRICS|QUEUES)\w*)`", README))
    assert {"QUEUES", "WEBHOOK_ALLOW_PRIVATE", "METRICS_TOKEN"} <= names
    assert {name.lower() for name in names} <= set(Settings.model_fields)
