from msrec.cli import main

main()
