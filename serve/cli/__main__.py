from serve.cli.main import main

raise SystemExit(main())
