from lit_dft.cli import main

main()
