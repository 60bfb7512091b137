from vitalab.cli import main

main()
