from dmpose.cli import main

if __name__ == "__main__":  # not again in a spawned training process (train.processes), which imports this module
    main()
