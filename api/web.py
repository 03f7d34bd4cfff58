"""A small status page at / for people who open the node in a browser."""

from __future__ import annotations

from html import escape

from flask import Blueprint, Response

from api.app import node

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    n = node()
    info = n.info()
    rows = "".join(
        f"<tr><td>{escape(str(w.get('name')))}</td><td>{escape(','.join(w.get('queues', [])))}</td>"
        f"<td>{w.get('cpuCores')}</td><td>{w.get('slots')}</td><td>{len(w.get('running', []))}</td>"
        f"<td>{escape(str(w.get('engine')))} {escape(str(w.get('engineVersion')))}</td></tr>"
        for w in n.live_workers()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ODM Farm</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}</style></head>
<body><h1>ODM Farm</h1>
<p>NodeODM API {escape(info["version"])} &middot; engine {escape(str(info["engine"]))} {escape(str(info["engineVersion"]))}
&middot; {info["taskQueueCount"]} task(s) queued or running &middot; {info["maxParallelTasks"]} slot(s)</p>
<h2>Workers</h2><table><tr><th>name</th><th>queues</th><th>cores</th><th>slots</th><th>running</th><th>engine</th></tr>
{rows or "<tr><td colspan=6>no live worker</td></tr>"}</table>
<p>Point PyODM, WebODM, CloudODM or ClusterODM at this address as if it were a NodeODM node.</p>
</body></html>"""
    return Response(page, mimetype="text/html")
