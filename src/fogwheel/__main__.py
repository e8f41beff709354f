from fogwheel.cli import main

main()
