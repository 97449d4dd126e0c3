"""One CI job's AutoGen team: a reviewer and an operator (AgentChat AssistantAgents) with ordinary
tools, in a round-robin group chat.

Nothing in here knows about agentgate. The tools connect to the real addresses of the database,
the build host and the Kubernetes API server, from the environment a CI job has anyway:

  PGHOST, PGPORT, PGDATABASE, PGUSER   the database (asyncpg reads them)
  SSH_HOST, SSH_PORT, SSH_USER         the build host, SSH_KNOWN_HOSTS its known_hosts file
  KUBECONFIG                           the cluster (kubectl)
  JOB_TOKEN                            the job's OIDC token: its database and SSH password (the
                                       kubeconfig carries it as the bearer token)

The model is autogen-ext's ReplayChatCompletionClient: the job file (argv[1]) scripts each
agent's replies (tool calls, then a closing text), so the example runs without a model, a network
or a key. Swap it for OpenAIChatCompletionClient and the rest stays as it is.

Every message of the run goes to stdout as one JSON line, tool results exactly as the agents saw
them: that is what tests/tests/autogen_story.rs checks for raw personal data.
"""

import asyncio
import dataclasses
import json
import os
import sys
import time
import warnings

# asyncssh imports DSA support, which cryptography flags as deprecated: noise in a transcript.
warnings.filterwarnings("ignore", module="asyncssh")

import asyncpg
import asyncssh
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import FunctionCall
from autogen_core.models import CreateResult, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient

MODEL_INFO = {
    "vision": False,
    "function_calling": True,
    "json_output": False,
    "family": "unknown",
    "structured_output": False,
}


def token() -> str:
    return os.environ["JOB_TOKEN"]


def rows_text(rows) -> str:
    return "\n".join(" | ".join("" if v is None else str(v) for v in r.values()) for r in rows)


# --- the tools: plain client code, as a team writes it without any gateway in mind ---------------


async def sql_query(sql: str) -> str:
    """Run one SQL statement on the project database and return its rows."""
    try:
        conn = await asyncpg.connect(password=token())
    except Exception as e:  # the tool reports, the agent decides
        return f"connect failed: {type(e).__name__}: {e}"
    try:
        if sql.lstrip().upper().startswith("SELECT"):
            return rows_text(await conn.fetch(sql)) or "(no rows)"
        return await conn.execute(sql)
    except Exception as e:
        return f"error: {type(e).__name__}: {e}"
    finally:
        await conn.close()


async def watch_query(sql: str, seconds: int) -> str:
    """Poll a query every second on one connection for `seconds` seconds (a long review step)."""
    start = time.monotonic()
    runs = 0
    last = ""
    try:
        conn = await asyncpg.connect(password=token())
    except Exception as e:
        return f"connect failed: {type(e).__name__}: {e}"
    try:
        while time.monotonic() - start < seconds:
            last = rows_text(await conn.fetch(sql))
            runs += 1
            await asyncio.sleep(1)
        return f"watched {runs} times over {time.monotonic() - start:.0f} s; last: {last}"
    except Exception as e:
        return (
            f"session ended after {runs} queries and {time.monotonic() - start:.0f} s: "
            f"{type(e).__name__}: {e}"
        )
    finally:
        if not conn.is_closed():
            conn.terminate()


async def ssh_run(command: str) -> str:
    """Run a shell command on the build host over SSH; exit status and output."""
    try:
        async with asyncssh.connect(
            os.environ["SSH_HOST"],
            port=int(os.environ["SSH_PORT"]),
            username=os.environ["SSH_USER"],
            password=token(),
            known_hosts=os.environ["SSH_KNOWN_HOSTS"],
            client_keys=None,
            agent_path=None,
            preferred_auth=["password"],
        ) as conn:
            r = await conn.run(command)
    except Exception as e:
        return f"ssh failed: {type(e).__name__}: {e}"
    return f"exit {r.exit_status}\nstdout: {str(r.stdout).strip()}\nstderr: {str(r.stderr).strip()}"


async def kubectl(args: list[str]) -> str:
    """Run kubectl with these arguments against the cluster; exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return f"exit {proc.returncode}\nstdout: {out.decode().strip()}\nstderr: {err.decode().strip()}"


TOOLS = {"sql_query": sql_query, "watch_query": watch_query, "ssh_run": ssh_run, "kubectl": kubectl}


# --- the team ------------------------------------------------------------------------------------


def scripted_model(name: str, steps: list) -> ReplayChatCompletionClient:
    """The agent's replies: a tool call per step ({"tool", "args"}), or a text ({"say"})."""
    replies = []
    for i, step in enumerate(steps):
        if "say" in step:
            replies.append(step["say"])
            continue
        call = FunctionCall(id=f"{name}-{i}", name=step["tool"], arguments=json.dumps(step["args"]))
        replies.append(
            CreateResult(
                finish_reason="function_calls",
                content=[call],
                usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
                cached=False,
            )
        )
    return ReplayChatCompletionClient(replies, model_info=MODEL_INFO)


def plain(item):
    """A FunctionCall (a dataclass) or a FunctionExecutionResult (pydantic) as JSON-ready data."""
    if dataclasses.is_dataclass(item):
        return dataclasses.asdict(item)
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json")
    return item


def emit(job: str, message) -> None:
    kind = type(message).__name__
    content = getattr(message, "content", None)
    if isinstance(content, list):
        content = [plain(c) for c in content]
    line = {"job": job, "type": kind, "source": getattr(message, "source", None), "content": content}
    print(json.dumps(line), flush=True)


async def main(path: str) -> None:
    with open(path) as f:
        job = json.load(f)
    agents = [
        AssistantAgent(
            a["name"],
            model_client=scripted_model(a["name"], a["script"]),
            tools=[TOOLS[t] for t in a["tools"]],
            system_message=a["system"],
            # Each agent works through its tool calls in one turn, then hands over.
            max_tool_iterations=len(a["script"]),
        )
        for a in job["agents"]
    ]
    team = RoundRobinGroupChat(
        agents,
        termination_condition=TextMentionTermination("TERMINATE") | MaxMessageTermination(40),
    )
    async for message in team.run_stream(task=job["task"]):
        if hasattr(message, "stop_reason"):
            print(json.dumps({"job": job["job"], "type": "TaskResult", "stop_reason": message.stop_reason}), flush=True)
        else:
            emit(job["job"], message)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
