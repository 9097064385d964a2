import nemo_run as run
from nemo.collections import llm

if __name__ == "__main__":
    # the factory comes from the command line: --factory qwen25_7b
    run.cli.main(llm.finetune)
