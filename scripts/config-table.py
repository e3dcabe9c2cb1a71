#!/usr/bin/env python3
"""Prints the Markdown table of a subcommand's flags, from `shortlink <sub> --help`:
   scripts/config-table.py <path to shortlink> <subcommand...> [--only PREFIX,...]
Used to write the tables of docs/CONFIGURATION.md from the code."""
import re, subprocess, sys

args = sys.argv[1:]
only = None
if "--only" in args:
    i = args.index("--only"); only = args[i + 1].split(","); del args[i:i + 2]
out = subprocess.run([args[0], *args[1:], "--help"], capture_output=True, text=True, check=True).stdout
rows, cur = [], None
for line in out.splitlines():
    m = re.match(r"^\s+(-\w, )?(--[\w-]+)(?: <[^>]+>)?\s*$", line)
    if m:
        cur = [m.group(2), ""]; rows.append(cur); continue
    m = re.match(r"^\s+(<\w+>|[A-Z_]+)\s*$", line)
    if m and cur is None:
        continue
    # clap's compact layout: the flag and its help on one line.
    m = re.match(r"^\s+(-\w, )?(--[\w-]+)(?: <[^>]+>)?\s{2,}(\S.*)$", line)
    if m:
        cur = None; rows.append([m.group(2), m.group(3)]); continue
    if cur is not None and line.startswith("          "):
        cur[1] += (" " if cur[1] else "") + line.strip()
print("| Flag | Environment variable | Default | Meaning |")
print("|---|---|---|---|")
for flag, text in rows:
    if flag in ("--help", "--version", "--log-format", "--log-level", "--otlp-endpoint"):
        continue
    env = re.search(r"\[env: ([A-Z0-9_]+)", text)
    default = re.search(r"\[default: ([^\]]*)\]", text)
    meaning = re.sub(r"\s*\[(env|default): [^\]]*\]", "", text).strip()
    if only and not any(flag.startswith(o) or (env and env.group(1).startswith(o)) for o in only):
        continue
    print(f"| `{flag}` | {('`' + env.group(1) + '`') if env else ''} | {('`' + default.group(1) + '`') if default else ''} | {meaning.replace('|', '/')} |")
