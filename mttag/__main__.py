from mttag.cli import main

main()
