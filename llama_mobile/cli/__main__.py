from llama_mobile.cli.main import main

main()
