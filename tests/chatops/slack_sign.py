"""Slack request signatures by an independent implementation: slack_sdk's SignatureVerifier.

Baton's chat-ops tests (tests/tests/it/chatops.rs) run this with the venv that scripts/test-deps
makes. It reads one JSON request per line on stdin and writes one JSON answer per line:

  {"op": "sign", "secret": S, "timestamp": T, "body": B}
      -> {"signature": "v0=..."}                      (SignatureVerifier.generate_signature)
  {"op": "verify", "secret": S, "timestamp": T, "body": B, "signature": SIG, "now": N}
      -> {"valid": true|false}                          (SignatureVerifier.is_valid at time N)
"""

import json
import sys

from slack_sdk.signature import Clock, SignatureVerifier


class FixedClock(Clock):
    """A clock that says it is `now` (unix seconds)."""

    def __init__(self, now):
        self._now = float(now)

    def now(self):
        return self._now


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["op"] == "sign":
            verifier = SignatureVerifier(req["secret"])
            answer = {"signature": verifier.generate_signature(timestamp=req["timestamp"], body=req["body"])}
        elif req["op"] == "verify":
            verifier = SignatureVerifier(req["secret"], clock=FixedClock(req["now"]))
            valid = verifier.is_valid(body=req["body"], timestamp=req["timestamp"], signature=req["signature"])
            answer = {"valid": bool(valid)}
        else:
            answer = {"error": "unknown op " + repr(req["op"])}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
