"""The baseline for bench/ingest.py: a Flask endpoint that answers 202 and does nothing."""
from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/healthz")
def healthz():  # what the benchmark waits for before it starts
    return jsonify({"ok": True})


@app.post("/webhooks/bitbucket/<name>")
def receive(name):
    return jsonify({"delivery": "bare"}), 202
