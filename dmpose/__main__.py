from dmpose.cli import main

main()
