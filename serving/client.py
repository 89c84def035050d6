"""Calling a radlab deployment: the report endpoint with httpx, and the chat endpoint with the
official openai client.

    python serving/client.py path/to/cxr.png [--url http://127.0.0.1:8000] [--indication dyspnea]

Set RADLAB_API_KEY when the deployment requires a token.
"""

import argparse
import base64
import mimetypes
import os

import httpx
from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("image")
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--indication", default="")
args = parser.parse_args()
key = os.environ.get("RADLAB_API_KEY", "")
headers = {"Authorization": f"Bearer {key}"} if key else {}

with open(args.image, "rb") as fh:
    data = fh.read()
report = httpx.post(f"{args.url}/v1/reports", files={"image": (os.path.basename(args.image), data)},
                    data={"indication": args.indication}, headers=headers, timeout=120)
report.raise_for_status()
print("report endpoint:", report.json()["findings"])

client = OpenAI(base_url=f"{args.url}/v1", api_key=key or "none")
model = client.models.list().data[0].id
kind = mimetypes.guess_type(args.image)[0] or "application/dicom"
url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
    {"type": "text", "text": "Provide a description of the findings in the radiology image."},
    {"type": "image_url", "image_url": {"url": url}}]}])
print("chat endpoint:", reply.choices[0].message.content)
