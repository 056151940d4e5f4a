"""The chat page in Chromium, as a person uses it, on an adapter trained here.

One tiny adapter (chatml/demo on the bundled sample: two training steps, a quick evaluation)
is trained once for the module; the page is the project's own ``echo-pipeline chat --web``
on a free port. A reply must be the adapter's own (the same greedy reply a ChatSession gives
for the same message), streamed in pieces; side by side keeps a preference pair; three rounds
of "which one is me?" give a score; two tabs judging at once lose nothing; a restarted server
still has every judgement; ``human_judgements`` puts the count on the MLflow evaluation run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import pytest
from browser_support import free_port, log_tail, server

from echo_pipeline.infra import paths
from echo_pipeline.operations.servers import chat_page_command

pytestmark = pytest.mark.browser

ADAPTER = "demo|chatml"
MESSAGE = "are you coming to the match tonight?"
FOLLOW_UP = "ok and who else is coming?"


def _materialize(selection, partition_key=None, ops=None):
    import dagster as dg

    from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources

    result = dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=selection,
        partition_key=partition_key,
        resources=build_resources(),
        run_config={"ops": {k: v for k, v in (ops or {}).items() if k in selection}},
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_model):
    """chatml/demo trained for two steps and evaluated quickly; yields the environment."""
    from run_configs import QUICK_EVALUATION, SMALL_HELDOUT, TINY_TRAINING_IN_STEP

    from echo_pipeline.defs.partitions import adapter_key

    root = tmp_path_factory.mktemp("chat_page")
    env = {
        "ECHO_DATA_DIR": str(root / "data"),
        "ECHO_MODELS_DIR": str(paths.models_dir()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DAGSTER_HOME": str(root / "dagster_home"),
    }
    (root / "dagster_home").mkdir()
    with mock.patch.dict(os.environ, env):
        key = adapter_key("chatml", "demo")
        _materialize(["raw_chat_export", "chat_messages", "conversation_pairs"], ops=SMALL_HELDOUT)
        _materialize(["template_dataset"], "chatml")
        _materialize(["lora_adapter"], key, ops=TINY_TRAINING_IN_STEP)
        _materialize(["evaluation_report"], key, ops=QUICK_EVALUATION)
        yield env | {"root": str(root)}


def chat_page(trained, log: Path):
    """The project's own ``chat --web`` command on a free port, with the pipeline's data."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ECHO_DATA_DIR"}
    env |= {k: v for k, v in trained.items() if k != "root"}
    command = chat_page_command(port)
    return server(command, env, f"http://127.0.0.1:{port}/", log, timeout_s=90), port


def wait_done(locator) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_attribute("data-state", "done", timeout=120_000)


def play_round(page, choice: str = "left") -> str:
    from playwright.sync_api import expect

    page.click("#game-next")
    expect(page.locator(f"#game-{choice}")).to_be_visible(timeout=120_000)
    expect(page.locator(f"#game-{choice}")).to_be_enabled(timeout=120_000)  # the round is dealt
    page.click(f"#game-{choice}")
    expect(page.locator("#game-result")).to_have_text(re.compile("^(Right|Wrong)"))
    return page.locator("#game-result").inner_text()


def test_chat_side_by_side_and_the_game(trained, new_page, save_screenshot, tmp_path):
    from playwright.sync_api import expect

    from echo_pipeline.evaluation.feedback import load_judgements, load_ratings, preference_pairs
    from echo_pipeline.serving.chat import ChatSession

    data = Path(trained["ECHO_DATA_DIR"])
    started, port = chat_page(trained, tmp_path / "chat.log")
    with started:
        page = new_page(width=1280, height=860)
        page.goto(f"http://127.0.0.1:{port}/")
        options = page.locator("#voice option")
        expect(options.first).to_have_attribute("value", ADAPTER)
        expect(options.first).to_have_text(
            re.compile(r"^chatml × demo — .+, reply loss \d+\.\d\d$")
        )
        page.select_option("#voice", ADAPTER)
        page.check("#greedy")  # deterministic, to compare with the adapter's own reply below

        # --- chat: a streamed reply, written by the adapter --------------------------------
        page.fill("#chat-input", MESSAGE)
        page.click("#chat-send")
        reply = page.locator("#chat-log .msg.me").nth(0)
        wait_done(reply)
        shown = reply.locator(".text").inner_text().strip()
        assert int(reply.get_attribute("data-pieces")) >= 2  # it came token by token
        with mock.patch.dict(os.environ, {"ECHO_MODELS_DIR": trained["ECHO_MODELS_DIR"]}):
            session = ChatSession.from_adapter(
                data / "lora_adapter" / "chatml__demo",
                max_new_tokens=8,  # the quick evaluation's, which the page reads
                decoding={"reply_repetition_penalty": 1.1},
            )
        decoding = {"max_new_tokens": 8, "reply_repetition_penalty": 1.1}
        [(expected, _)] = session.generate([session.prompt_ids(MESSAGE)], **decoding)
        assert shown == expected and shown
        # the conversation is carried: the second reply is prompted with the first exchange
        page.fill("#chat-input", FOLLOW_UP)
        page.click("#chat-send")
        second = page.locator("#chat-log .msg.me").nth(1)
        wait_done(second)
        session.say(MESSAGE)  # greedy like the page: the same first reply joins the history
        assert session.history[-1]["text"] == expected
        [(expected_second, _)] = session.generate([session.prompt_ids(FOLLOW_UP)], **decoding)
        assert second.locator(".text").inner_text().strip() == expected_second
        reply.locator("button.notme").click()
        expect(reply.locator("button.notme")).to_have_attribute("aria-pressed", "true")
        second.locator("button.sounds").click()
        expect(second.locator("button.sounds")).to_have_attribute("aria-pressed", "true")
        save_screenshot(page, "chat-page.png")

        # --- side by side: base and adapter, the better one kept as a preference pair -------
        page.click("#tab-side")
        expect(page.locator("#left-voice")).to_have_value(f"base:{ADAPTER}")
        page.uncheck("#greedy")  # two steps of training: greedy, base and adapter may agree
        for _ in range(3):  # each send is a new draw on each side
            page.fill("#side-input", MESSAGE)
            page.click("#side-send")
            wait_done(page.locator("#side-left"))
            wait_done(page.locator("#side-right"))
            right = page.locator("#side-right .text").inner_text().strip()
            if right != page.locator("#side-left .text").inner_text().strip():
                break
        page.locator("#side-right .better").click()
        expect(page.locator("#status")).to_have_text("Kept as a preference pair.")
        save_screenshot(page, "chat-side-by-side.png")
        [pair] = preference_pairs(load_ratings(data, ADAPTER))
        assert pair["source"] == "human_choice" and pair["chosen"] == right
        assert pair["prompt"] == MESSAGE and pair["adapter"] == ADAPTER

        # --- which one is me? three rounds, then the score ---------------------------------
        page.click("#tab-game")
        expect(page.locator("#game-score")).to_have_text("No rounds judged yet for this adapter.")
        for _ in range(3):
            play_round(page)
        expect(page.locator("#game-score")).to_have_text(
            re.compile(r"^The clone fooled you in [0-3] of 3 rounds \(\d+ %, 95 % interval")
        )
        save_screenshot(page, "chat-which-one-is-me.png")

        # --- two tabs judging at once lose nothing -----------------------------------------
        other = new_page(width=1000, height=700)
        other.goto(f"http://127.0.0.1:{port}/")
        for tab in (page, other):
            tab.click("#tab-game")
            tab.click("#game-next")
        for tab in (page, other):
            expect(tab.locator("#game-right")).to_be_visible(timeout=120_000)
            expect(tab.locator("#game-right")).to_be_enabled(timeout=120_000)
        other.click("#game-right", no_wait_after=True)
        page.click("#game-right", no_wait_after=True)
        for tab in (page, other):
            expect(tab.locator("#game-result")).to_have_text(re.compile("^(Right|Wrong)"))
        judged = load_judgements(data, ADAPTER)
        assert len(judged) == 5 and len({j.created_at for j in judged}) == 5
        fooled = sum(j.fooled for j in judged)
    log = log_tail(tmp_path / "chat.log", 100_000)
    for text in (MESSAGE, expected):  # chat text never reaches the server's log
        assert text not in log

    # --- a restarted server still has every judgement --------------------------------------
    started, port = chat_page(trained, tmp_path / "chat-again.log")
    with started:
        page = new_page(width=1000, height=700)
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#tab-game")
        expect(page.locator("#game-score")).to_have_text(
            re.compile(rf"^The clone fooled you in {fooled} of 5 rounds")
        )

    # --- the count on the adapter's MLflow evaluation run ----------------------------------
    import mlflow

    from echo_pipeline.defs.feedback import latest_evaluation_run
    from echo_pipeline.defs.partitions import adapter_key

    env = {k: v for k, v in trained.items() if k != "root"}
    with mock.patch.dict(os.environ, env):
        result = _materialize(["human_judgements"], adapter_key("chatml", "demo"))
        meta = result.asset_materializations_for_node("human_judgements")[0].metadata
        assert meta["rounds"].value == 5 and meta["fooled"].value == fooled
        assert meta["preference_pairs_human_choice"].value == 1  # side by side's choice
        assert meta["one_sided_ratings"].value == 2  # chat's "not me" and "sounds like me"
        run = latest_evaluation_run(env["MLFLOW_TRACKING_URI"], "echo_pipeline", "chatml", "demo")
        metrics = (
            mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run.info.run_id).data.metrics
        )
    assert metrics["human_judgements"] == 5 and metrics["human_fooled"] == fooled
    assert metrics["human_fooled_share"] == pytest.approx(fooled / 5)
