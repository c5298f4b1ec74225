"""The baseline for bench/ingest.py: a Flask endpoint that answers 202 and does nothing."""
from flask import Flask, jsonify

app = Flask(__name__)


@app.post("/webhooks/bitbucket/<name>")
def receive(name):
    return jsonify({"delivery": "bare"}), 202
