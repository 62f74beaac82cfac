#!/usr/bin/env python3
"""An MCP server over stdio that misbehaves on purpose, for the AI processor's MCP client tests.

It initializes and lists its tools like any server; then each tool is one way of being hostile:
flood (a message with no end, past the client's 16 MiB cap), deep (JSON nested 100 000 deep), big
(a 1 MiB result), garbage (junk lines before a good answer), silent (never answers), wrong_id (answers
another request). It also lists more tools than the client takes, one with an oversized schema and
two whose names are the same once made safe. With the argument `wide`, it lists 200 tools with 3 KiB
descriptions instead (more than the client adds to a model request).
"""
import json
import sys


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def answer(mid, text):
    send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}]}})


TOOLS = ["ok", "flood", "deep", "big", "garbage", "silent", "wrong_id", "dup.name", "dup:name"]
WIDE = len(sys.argv) > 1 and sys.argv[1] == "wide"

for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    mid, method = m.get("id"), m.get("method")
    if mid is None:
        continue  # a notification
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                                      "serverInfo": {"name": "hostile", "version": "0"}}})
    elif method == "tools/list":
        if WIDE:
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
                {"name": "wide%d" % i, "description": "w" * 3072, "inputSchema": {"type": "object"}} for i in range(200)]}})
            continue
        tools = [{"name": n, "description": "hostile " + n, "inputSchema": {"type": "object"}} for n in TOOLS]
        tools.append({"name": "huge_schema", "inputSchema": {"type": "object", "properties": {
            "p%d" % i: {"type": "string", "description": "x" * 100} for i in range(1000)}}})
        tools += [{"name": "many%d" % i, "inputSchema": {"type": "object"}} for i in range(500)]
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
    elif method == "tools/call":
        name = m.get("params", {}).get("name")
        if name == "ok":
            answer(mid, "fine")
        elif name == "flood":
            sys.stdout.write('{"jsonrpc":"2.0","id":%d,"result":"' % mid)
            chunk = "x" * (1 << 20)
            for _ in range(20):
                sys.stdout.write(chunk)
            sys.stdout.flush()
        elif name == "deep":
            sys.stdout.write('{"jsonrpc":"2.0","id":%d,"result":%s%s}\n' % (mid, "[" * 100000, "]" * 100000))
            sys.stdout.flush()
        elif name == "big":
            answer(mid, "y" * (1 << 20))
        elif name == "garbage":
            sys.stdout.write("not json at all\n[1, 2, 3]\n{\"id\": \"str\"}\n\n")
            answer(mid, "fine after garbage")
        elif name == "wrong_id":
            answer(mid + 1000, "for somebody else")
        # silent: nothing
    else:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no " + str(method)}})
