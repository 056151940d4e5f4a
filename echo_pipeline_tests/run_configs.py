"""Run config the Dagster tests share, keyed by op: small held-out splits, two training steps,
a quick evaluation (the machine's 2 cores are shared, hence one torch thread)."""

SMALL_HELDOUT = {
    "conversation_pairs": {
        "config": {"val_fraction": 0.03, "test_fraction": 0.03, "test_min_pairs": 0}
    }
}
TINY_TRAINING = {
    "lora_adapter": {
        "config": {
            "max_steps": 2,
            "pack_tokens": 256,
            "eval_every": 0,
            "checkpoint_every": 0,
            "torch_threads": 1,
        }
    }
}
QUICK_EVALUATION = {
    "evaluation_report": {
        "config": {
            "num_prompts": 2,
            "samples_per_prompt": 1,
            "discriminator_prompts": 2,
            "batch_size": 2,
            "max_new_tokens": 8,
            "max_loss_examples": 4,
            "torch_threads": 1,
        }
    }
}

# The same cuts for `echo-pipeline run --config FILE` (with --max-steps 1 --eval-max-pairs 2):
# one 512-token step (real exports have 280-token samples), one thread, an evaluation of two
# pairs with 8 new tokens and no MiniLM.
CLI_TINY = {
    "ops": {
        "lora_adapter": {
            "config": {
                "pack_tokens": 512,
                "eval_every": 0,
                "checkpoint_every": 0,
                "torch_threads": 1,
            }
        },
        "evaluation_report": {
            "config": {
                "samples_per_prompt": 1,
                "discriminator_prompts": 2,
                "batch_size": 2,
                "max_new_tokens": 8,
                "torch_threads": 1,
                "similarity": False,
            }
        },
    }
}
