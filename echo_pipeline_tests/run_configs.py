"""Run config the Dagster tests share, keyed by op: small held-out splits, two training steps,
a quick evaluation. Torch threads are left to the pipeline's own sizing (the cores idle when a
step starts): both cores on a quiet CI machine, one when the machine is shared."""

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
        }
    }
}
#: The same, trained inside the Dagster step: for tests where an adapter is only the setting
#: (the Pipes child costs a torch import and a model load; its own tests keep it).
TINY_TRAINING_IN_STEP = {
    "lora_adapter": {"config": {**TINY_TRAINING["lora_adapter"]["config"], "out_of_process": False}}
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
        }
    }
}

# The same cuts for `echo-pipeline run --config FILE` (with --max-steps 1 --eval-max-pairs 2):
# one 512-token step (real exports have 280-token samples), an evaluation of two
# pairs with 8 new tokens and no MiniLM.
CLI_TINY = {
    "ops": {
        "lora_adapter": {
            "config": {
                "pack_tokens": 512,
                "eval_every": 0,
                "checkpoint_every": 0,
            }
        },
        "evaluation_report": {
            "config": {
                "samples_per_prompt": 1,
                "discriminator_prompts": 2,
                "batch_size": 2,
                "max_new_tokens": 8,
                "similarity": False,
            }
        },
    }
}
