"""What a video costs the object store: every S3 request of a real run counted, by kind, per video.

The run (the real flow: Prefect, Ray, embedded Triton) labels N short videos from a bucket into the same
bucket of a real S3 server (SeaweedFS, tests/seaweed.py) through a counting proxy: every request the
driver and the Ray workers send passes through it and is forwarded unchanged. Then the same command again,
with nothing new to label. What the projection to a million videos (docs/scale.md) multiplies.

    python benchmarks/s3_requests.py --videos 12
    python benchmarks/s3_requests.py --publish      # docs/s3_requests.json (clean tree only)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state  # noqa: E402
from tests.s3_proxy import CountingProxy  # noqa: E402

JSON_PATH = ROOT / "docs" / "s3_requests.json"


class _Tmp:
    """What the s3_server fixture needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--publish", action="store_true", help="write docs/s3_requests.json (clean tree only)")
    a = ap.parse_args()
    state = publish_state(a.publish)
    from tests.media import write_video
    from tests.seaweed import s3_server

    with tempfile.TemporaryDirectory(prefix="emoframe-s3req-") as tmp_name:
        tmp = Path(tmp_name)
        fixture = s3_server._get_wrapped_function()(_Tmp(tmp))  # the fixture, outside pytest
        server = next(fixture)
        proxy = CountingProxy(server.endpoint)
        try:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            fs = server.filesystem()
            for i in range(a.videos):
                clip = write_video(tmp / f"v{i}.mp4", 24 + i, 15, audio_seconds=(24 + i) / 15)
                with fs.open_output_stream(f"{server.bucket}/archive/v{i:03d}.mp4") as f:
                    f.write(clip.read_bytes())
            from emoframe.flows.run.label_archive import run_label_archive

            proxy.take()
            settings = dict(face_mode="centred", report=False)
            first = run_label_archive([server.uri("archive")], server.uri("labels"), **settings)
            first_counts = proxy.take()
            again = run_label_archive([server.uri("archive")], server.uri("labels"), **settings)
            again_counts = proxy.take()
        finally:
            proxy.close()
            try:
                next(fixture)
            except StopIteration:
                pass
    assert first["labelled"] == a.videos and again["already_done"] == a.videos, (first, again)
    n = a.videos
    per = lambda counts: {k: round(v / n, 2) for k, v in sorted(counts.items())}  # noqa: E731
    record = {"commit": state["head"], "dirty": state["dirty"], "measured_at": time.strftime("%Y-%m-%d"),
              "videos": n, "first_run": first_counts, "rerun": again_counts,
              "first_run_per_video": per(first_counts), "rerun_per_video": per(again_counts),
              "rerun_started_services": again["services_started"]}
    print(f"first run, {n} videos: {sum(first_counts.values())} requests = "
          f"{sum(first_counts.values()) / n:.1f} a video {record['first_run_per_video']}")
    print(f"rerun with nothing new: {sum(again_counts.values())} requests = "
          f"{sum(again_counts.values()) / n:.1f} a video {record['rerun_per_video']}")
    if a.publish:
        JSON_PATH.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {JSON_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
