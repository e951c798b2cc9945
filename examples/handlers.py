"""Example handlers: a video pipeline and an image pipeline with simulated work.

Installed only with ``FLOWSITE_EXAMPLES`` (on by default in embedded mode only).
The work time is ``data["workMs"]`` or ``settings.FLOWSITE_EXAMPLE_WORK_MS``, cut
down to ``settings.FLOWSITE_EXAMPLE_MAX_WORK_MS``: nobody can hold a worker with them.
Each handler reports progress and logs what it does, as a real one would.
"""

from __future__ import annotations

import time

from django.conf import settings

from jobs.handlers import JobContext, job_handler


def _work(ctx: JobContext, steps: int = 4) -> None:
    work_ms = ctx.data.get("workMs", settings.FLOWSITE_EXAMPLE_WORK_MS)
    if isinstance(work_ms, bool) or not isinstance(work_ms, (int, float)):
        raise ValueError(f"data.workMs must be a number of milliseconds, got {work_ms!r}")
    limit = settings.FLOWSITE_EXAMPLE_MAX_WORK_MS
    if work_ms > limit:
        ctx.log(f"workMs {work_ms} is over the maximum (FLOWSITE_EXAMPLE_MAX_WORK_MS): working {limit} ms")
    work_ms = min(max(work_ms, 0), limit)
    for step in range(1, steps + 1):
        time.sleep(work_ms / 1000 / steps)
        ctx.update_progress(round(100 * step / steps))


@job_handler("download-video")
def download_video(ctx: JobContext) -> dict:
    # The legacy pipeline named a video by ``videoId``; Flowsite's names it by ``url``.
    video_id = ctx.data.get("videoId")
    url = ctx.data.get("url") or f"https://example.com/videos/{video_id or 'video'}.mp4"
    ctx.log(f"Downloading {url}")
    _work(ctx)
    name = url.rstrip("/").rsplit("/", 1)[-1] or "video.mp4"
    result = {"filePath": f"/tmp/flowsite/{ctx.flow_id}/{name}", "sizeBytes": 10_485_760}
    return {**result, "videoId": video_id} if video_id is not None else result


@job_handler("generate-thumbnail")
def generate_thumbnail(ctx: JobContext) -> dict:
    at = ctx.data.get("atSecond", 1)
    ctx.log(f"Generating a thumbnail at {at}s")
    _work(ctx)
    return {"thumbnailPath": f"/tmp/flowsite/{ctx.flow_id}/thumbnail.jpg", "atSecond": at}


@job_handler("watermark-video")
def watermark_video(ctx: JobContext) -> dict:
    # Legacy inputs: ``videoId`` (when no download-video child gives the file) and
    # ``watermarkText``; legacy output: ``watermarkedPath``, beside Flowsite's ``outputPath``.
    video_id = ctx.data.get("videoId")
    downloaded = ctx.children_values.get("download-video") or {}
    source = downloaded.get("filePath") or f"/tmp/flowsite/{ctx.flow_id}/{video_id or 'video'}.mp4"
    thumbnail = (ctx.children_values.get("generate-thumbnail") or {}).get("thumbnailPath")
    text = ctx.data.get("watermark") or ctx.data.get("watermarkText") or "Flowsite"
    ctx.log(f"Watermarking {source} with {text!r}")
    _work(ctx)
    output = source.replace(".mp4", "-watermarked.mp4")
    result = {"outputPath": output, "watermarkedPath": output, "watermark": text, "thumbnailPath": thumbnail}
    return {**result, "videoId": video_id} if video_id is not None else result


@job_handler("resize-image")
def resize_image(ctx: JobContext) -> dict:
    width = int(ctx.data.get("width", 800))
    ctx.log(f"Resizing {ctx.data.get('image', 'image.png')} to {width}px")
    _work(ctx, steps=2)
    return {"width": width, "path": f"/tmp/flowsite/{ctx.flow_id}/{width}.png"}


@job_handler("publish-gallery")
def publish_gallery(ctx: JobContext) -> dict:
    resized = ctx.children_values.get("resize-image", [])
    if isinstance(resized, dict):  # a single child of that name
        resized = [resized]
    sizes = sorted(value["width"] for value in resized)
    _work(ctx, steps=1)
    return {"published": True, "sizes": sizes}
