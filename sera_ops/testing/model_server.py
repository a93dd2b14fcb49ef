"""A local, CPU-only OpenAI-compatible server for a trained model directory: a test and dry-run double.

In production vLLM serves the student and its base model (`--tool-call-parser hermes`); this stand-in lets the
evaluation stage evaluate a tiny trained student end to end over the same protocol, offline and without a GPU. It
serves one model with transformers (`GET /v1/models`, non-streaming `POST /v1/chat/completions`), renders the incoming
OpenAI messages into exactly the ChatML text the SFT records were trained on (`sera_ops.dataset.formats`, Hermes
format), and parses `<tool_call>` blocks back into OpenAI tool calls as vLLM's Hermes parser does. Generation is
serialised (one model on CPU), so it is meant for tiny models and short replies, not for throughput.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from sera_ops.dataset.formats import trajectory_to_record
from sera_ops.settings import PostprocessOptions
from sera_ops.testing.loopback import LoopbackHTTPServer, LoopbackServer
from sera_ops.train.records import END_OF_TEXT, IM_END, IM_START, chatml_text

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256  # the server's cap on a reply: CPU generation stays quick whatever a client asks
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
BASE_MODEL_SUBDIR = "base_model"  # where a LoRA run on the tiny model publishes its base (sera_ops.train.run)
GENERATION_PROMPT = f"{IM_START}assistant\n"

# vLLM's Hermes tool parser: closed blocks, or one left open at the end of the reply (the model stopped first).
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(?!.*<tool_call>)(.*)\Z", re.DOTALL)
# mini-swe-agent's default text-mode action block: in text mode the command lives only in the content.
_TEXT_ACTION = re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL)
# A conversation's last turn, only there so that the formatter renders what precedes it; never shown to the model.
_SENTINEL = {"role": "assistant", "content": "", "extra": {"actions": [{"command": "true"}]}}


class RequestError(ValueError):
    """A request the server refuses: answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.code}}


def parse_hermes_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool_calls) of a generated reply, as vLLM's `--tool-call-parser hermes` splits it.

    Each `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block becomes an OpenAI tool call (`call_<n>`,
    arguments as a JSON string) and the rest of the text, stripped, is the content. When any block is not such a JSON
    object, nothing is parsed and the whole text is the content, as in vLLM: the agent then answers with its
    format-error feedback instead of running part of what the model wrote.
    """
    matches = list(_TOOL_CALL_BLOCK.finditer(text))
    if not matches:
        return text, []
    calls: list[dict[str, Any]] = []
    for number, match in enumerate(matches):
        block = match.group(1) if match.group(1) is not None else match.group(2)
        try:
            call = json.loads(block)
        except ValueError:
            return text, []
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)):
            return text, []
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        calls.append({"id": f"call_{number}", "type": "function",
                      "function": {"name": call["name"], "arguments": arguments}})
    return _TOOL_CALL_BLOCK.sub("", text).strip(), calls


def _actions(message: dict[str, Any]) -> list[dict[str, str]]:
    """The agent's commands of an assistant turn, as mini-swe-agent keeps them in `extra.actions` (the client sends
    messages without `extra`): its tool calls' `command`s, or in text mode its fenced action blocks."""
    calls = message.get("tool_calls") or []
    if not calls:
        content = message.get("content")
        return [{"command": command} for command in _TEXT_ACTION.findall(content if isinstance(content, str) else "")]
    actions = []
    for call in calls:
        arguments = (call.get("function") or {}).get("arguments", "") if isinstance(call, dict) else ""
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        command = parsed.get("command") if isinstance(parsed, dict) else None
        actions.append({"command": command if isinstance(command, str) else str(arguments)})
    return actions


def render_prompt(messages: list[dict[str, Any]], options: PostprocessOptions | None = None) -> str:
    """The ChatML prompt for OpenAI chat messages: the conversation exactly as `dataset.formats` renders a trajectory
    into an SFT record (Hermes system prompt, `<tool_call>` blocks, observations in `<tool_response>` user turns),
    then the `<|im_start|>assistant\\n` header the model continues from.

    As in the records, the system message is the format's own system prompt whatever the request's says. `options`
    are the export options the training data was made with (default: the platform's). A history that reformatting
    would drop (an assistant turn without a call) is rendered without reformatting instead of being refused.
    """
    options = (options or PostprocessOptions()).model_copy(update={"enforce_submit": False})
    if options.format != "hermes":
        raise ValueError(f"the local model server speaks the hermes format only, not {options.format!r}")
    trajectory_messages = [{**message, "extra": {"actions": _actions(message)}} if message.get("role") == "assistant"
                           else message for message in messages]
    trajectory = {"messages": [*trajectory_messages, _SENTINEL]}
    record = trajectory_to_record(trajectory, "prompt", options)
    if record is None:
        record = trajectory_to_record(trajectory, "prompt", options.model_copy(update={"reformat": None}))
    assert record is not None  # the sentinel is an assistant turn with a call: the formatter keeps the trajectory
    return chatml_text({"messages": record["messages"][:-1]}) + GENERATION_PROMPT


def _check_model_dir(model_dir: Path) -> bool:
    """Whether `model_dir` is a LoRA adapter (True) or full weights (False); ValueError when it is neither."""
    expected = (f"a transformers model directory (with {MODEL_CONFIG}) or a peft LoRA adapter directory "
                f"(with {ADAPTER_CONFIG})")
    if not model_dir.is_dir():
        raise ValueError(f"model directory {model_dir} does not exist; expected {expected}")
    if (model_dir / ADAPTER_CONFIG).is_file():
        return True
    if (model_dir / MODEL_CONFIG).is_file():
        return False
    raise ValueError(f"{model_dir} is not a model: expected {expected}")


def _adapter_base(model_dir: Path) -> str:
    """The adapter's base model: the recorded `base_model_name_or_path`, or the run's own `base_model/` copy when the
    recorded local path is gone (an output directory copied out of the store or a training pod)."""
    try:
        recorded = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as error:
        raise ValueError(f"{model_dir / ADAPTER_CONFIG} is not valid JSON ({error})") from None
    bundled = model_dir / BASE_MODEL_SUBDIR
    if recorded and (Path(recorded).is_dir() or not (bundled / MODEL_CONFIG).is_file()):
        return str(recorded)
    if (bundled / MODEL_CONFIG).is_file():
        return str(bundled)
    raise ValueError(f"{model_dir / ADAPTER_CONFIG} names no base model (base_model_name_or_path) and {bundled} "
                     "holds none")


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Request lines only, at debug level: never headers (the client's key) nor prompts."""
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = self.path.rstrip("/")
        if path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif path == "/v1/models":
            self._send(HTTPStatus.OK, self.server.double.models())
        else:
            self._send_error(RequestError(f"no route {self.path}", HTTPStatus.NOT_FOUND))

    def do_POST(self) -> None:
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.close_connection = True
            self._send_error(RequestError("bad Content-Length"))
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(RequestError(f"no route {self.path}", HTTPStatus.NOT_FOUND))
            return
        try:
            request = json.loads(body)
        except ValueError as error:
            self._send_error(RequestError(f"request body is not JSON: {error}"))
            return
        try:
            self._send(HTTPStatus.OK, self.server.double.complete(request))
        except RequestError as error:
            self._send_error(error)
        except Exception as error:  # a bug or a failed generation: an answer, not a dropped connection
            log.exception("chat completion failed")
            self._send_error(RequestError(f"generation failed: {type(error).__name__}: {error}",
                                          HTTPStatus.INTERNAL_SERVER_ERROR, "server_error"))

    def _send_error(self, error: RequestError) -> None:
        self._send(error.status, error.body())

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting


class LocalModelServer(LoopbackServer):
    """A trained model directory served over the OpenAI protocol on loopback, with transformers on CPU.

    A local test/dry-run double for the vLLM server production uses. `model_dir`: full weights (a transformers
    directory with config.json) or a peft LoRA adapter (adapter_config.json; its base is loaded from the recorded
    `base_model_name_or_path`, or the run's `base_model/` copy, and the adapter merged unless `merge=False`). Use as a
    context manager or `start()`/`stop()`; `base_url` is what an `openai.OpenAI` client takes. The model loads on
    `start()`; a missing or non-model directory raises ValueError at construction.
    """

    handler = _Handler
    name = "local model server"

    def __init__(self, model_dir: str | Path, served_name: str = "student", *, host: str = "127.0.0.1",
                 port: int = 0, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, merge: bool = True,
                 options: PostprocessOptions | None = None) -> None:
        super().__init__(host, port)
        self.model_dir = Path(model_dir)
        self.is_adapter = _check_model_dir(self.model_dir)
        self.served_name = served_name
        self.max_new_tokens = max_new_tokens
        self.merge = merge
        self.options = options
        self._generate_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._stop_ids: list[int] = []
        self._context: int | None = None

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1, for `openai.OpenAI(base_url=...)`."""
        return f"{self.address}/v1"

    @property
    def url(self) -> str:
        return self.base_url

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def _before_start(self) -> None:
        if self._model is None:
            self.load()

    def load(self) -> None:
        """Load the tokenizer and model (eval mode, CPU, fp32); `start()` does it when not done yet."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = _adapter_base(self.model_dir) if self.is_adapter else str(self.model_dir)
        tokenizer_dir = self.model_dir if any(
            (self.model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")) else base
        log.info("loading %s%s for the local model server", self.model_dir,
                 f" over base {base}" if self.is_adapter else "")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        if self.is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.model_dir))
            if self.merge:
                model = model.merge_and_unload()
        model.eval()
        stop_ids = {tokenizer.convert_tokens_to_ids(token) for token in (IM_END, END_OF_TEXT)}
        configured = getattr(model.generation_config, "eos_token_id", None)
        stop_ids.update(configured if isinstance(configured, list) else [configured])
        stop_ids.add(tokenizer.eos_token_id)
        self._stop_ids = sorted(i for i in stop_ids if isinstance(i, int) and i != tokenizer.unk_token_id)
        self._context = getattr(model.config, "max_position_embeddings", None)
        self._model, self._tokenizer = model, tokenizer

    @property
    def tokenizer(self) -> Any:
        """The served tokenizer (after `load()`/`start()`), e.g. to count tokens."""
        return self._tokenizer

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text this server feeds the model for `messages` (see `render_prompt`)."""
        return render_prompt(messages, self.options)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.served_name, "object": "model", "created": 0,
                                            "owned_by": "sera-ops-local", "root": str(self.model_dir),
                                            "max_model_len": self._context}]}

    def complete(self, request: Any) -> dict[str, Any]:
        """The chat.completion body for one request; RequestError for one the server refuses."""
        messages, sampling = self._parse(request)
        try:
            prompt = self.render(messages)
        except (AttributeError, KeyError, TypeError) as error:
            raise RequestError(f"'messages' are not OpenAI chat messages ({type(error).__name__}: {error})") from None
        prompt_ids = self._tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = sampling["max_tokens"]
        if self._context is not None:
            room = self._context - len(prompt_ids)
            if room < 1:
                raise RequestError(f"This model's maximum context length is {self._context} tokens; the prompt has "
                                   f"{len(prompt_ids)}.")
            limit = min(limit, room)
        with self._generate_lock:
            generated = self._generate(prompt_ids, limit, sampling["temperature"], sampling["top_p"], sampling["seed"])
        stopped = bool(generated) and generated[-1] in self._stop_ids
        text = self._tokenizer.decode(generated[:-1] if stopped else generated, skip_special_tokens=True)
        content, calls = parse_hermes_tool_calls(text) if sampling["tools"] else (text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        finish = "length" if not stopped else "tool_calls" if calls else "stop"
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.served_name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(generated),
                          "total_tokens": len(prompt_ids) + len(generated)}}

    def _parse(self, request: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and sampling parameters of a request, checked as an OpenAI server checks them."""
        if not isinstance(request, dict):
            raise RequestError("the request body must be a JSON object")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError("'messages' must be a non-empty list of objects")
        if request.get("stream"):
            raise RequestError("the local model server does not stream")
        if request.get("model") not in (None, self.served_name):
            raise RequestError(f"The model `{request.get('model')}` does not exist.", HTTPStatus.NOT_FOUND,
                               "NotFoundError", "model_not_found")
        if request.get("n") not in (None, 1):
            raise RequestError("only n=1 is supported")
        temperature = request.get("temperature", 1.0)
        top_p = request.get("top_p", 1.0)
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
        seed = request.get("seed")
        for name, value in (("temperature", temperature), ("top_p", top_p)):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise RequestError(f"'{name}' must be a number >= 0")
        if top_p == 0 or top_p > 1:
            raise RequestError("'top_p' must be in (0, 1]")
        for name, value in (("max_tokens", max_tokens), ("seed", seed)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise RequestError(f"'{name}' must be an integer")
        if max_tokens is not None and max_tokens < 1:
            raise RequestError("'max_tokens' must be at least 1")
        tools = bool(request.get("tools")) and request.get("tool_choice") != "none"
        return messages, {"temperature": float(temperature), "top_p": float(top_p), "seed": seed, "tools": tools,
                          "max_tokens": min(max_tokens or self.max_new_tokens, self.max_new_tokens)}

    def _generate(self, prompt_ids: list[int], limit: int, temperature: float, top_p: float,
                  seed: int | None) -> list[int]:
        """Token ids after the prompt, up to and including a stop token or `limit` of them: greedy at temperature 0,
        otherwise sampled from a generator seeded by the request's seed (same seed, same reply)."""
        import torch

        generator = None
        if temperature > 0:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        generated: list[int] = []
        with torch.inference_mode():
            inputs = torch.tensor([prompt_ids])
            past = None
            for _ in range(limit):
                output = self._model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = output.past_key_values
                logits = output.logits[0, -1].float()
                if generator is None:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_p < 1:
                        ordered, order = torch.sort(probs, descending=True)
                        outside = torch.cumsum(ordered, dim=-1) - ordered > top_p  # the nucleus keeps its first token
                        probs = torch.zeros_like(probs).scatter(0, order, ordered.masked_fill(outside, 0.0))
                    token = int(torch.multinomial(probs, 1, generator=generator))
                generated.append(token)
                if token in self._stop_ids:
                    break
                inputs = torch.tensor([[token]])
        return generated
