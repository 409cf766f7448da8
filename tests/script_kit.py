"""Helpers of the script tests (test_scripts.py, test_open_clip_trainers.py): a user-facing
script of scripts/promptkd run with bash as a user runs it, and the RESULT records it prints.
"""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, env):
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts/promptkd", script), *args], cwd="/",
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def results(stdout):
    return [json.loads(l.split("RESULT ", 1)[1]) for l in stdout.splitlines() if "RESULT {" in l]
