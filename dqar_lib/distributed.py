"""`torchrun --nproc_per_node=N -m dqar_lib.distributed --model PATH --num-images N --out DIR`: multi-process
sampling, each rank its seeds and its share of the images (the code is `dqar_lib.evaluation.distributed`)."""

from .evaluation.distributed import main

if __name__ == "__main__":
    main()
