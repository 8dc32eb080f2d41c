"""The explorer as a user meets it: `python -m app.launch_bench [python -m app's arguments]`.

Starts `python -m app ARGS` on a free local port, and measures, from the start of the process: when the page first
answers, when the first `/retrieve` of a photo (scikit-image's astronaut) answers, and the app process's resident
memory then (VmRSS) and at its peak (VmHWM). Prints one JSON object. For a prebuilt collection:
`python -m app.launch_bench --index DIR`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def main(argv: list[str] | None = None) -> int:
    import skimage.data
    from gradio_client import Client, handle_file
    from PIL import Image

    args = list(sys.argv[1:] if argv is None else argv)
    port = free_port()
    photo = Path(tempfile.mkdtemp()) / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, "-m", "app", *args, "--port", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if app.poll() is not None:
                print(json.dumps({"error": app.stderr.read()[-500:]}))
                return 2
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.perf_counter() - start > TIMEOUT_S:
                    raise
                time.sleep(0.2)
        page_s = time.perf_counter() - start
        summary, *_ = Client(url, verbose=False).predict(handle_file(str(photo)), api_name="/retrieve")
        answer_s = time.perf_counter() - start
        report = {"args": args, "page_s": round(page_s, 2), "first_answer_s": round(answer_s, 2),
                  **{f"{k}_mb": v for k, v in memory_mb(app.pid).items()}, "answer": summary.splitlines()[0]}
    finally:
        app.terminate()
        app.wait(timeout=60)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
