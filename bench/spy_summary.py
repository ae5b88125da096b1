"""Summarise a py-spy speedscope profile: the busiest functions of one thread, self and inclusive.

``.venv/bin/python bench/spy_summary.py out.json [--thread MainThread] [--top 30]``
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    data = json.load(open(args.profile))
    frames = data["shared"]["frames"]
    names = [f"{f['name']} ({f.get('file', '').rsplit('/', 1)[-1]}:{f.get('line', '')})" for f in frames]
    for profile in data["profiles"]:
        if args.thread not in profile["name"]:
            continue
        total = sum(profile["weights"])
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if stack:
                own[names[stack[-1]]] += weight
            for name in {names[i] for i in stack}:
                inclusive[name] += weight
        print(f"{profile['name']}: {total:.2f} s sampled")
        for title, counter in (("self", own), ("inclusive", inclusive)):
            print(f"-- {title}")
            for name, weight in counter.most_common(args.top):
                print(f"{100 * weight / total:5.1f}%  {weight:6.2f} s  {name}")


if __name__ == "__main__":
    main()
