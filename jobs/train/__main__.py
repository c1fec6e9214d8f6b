from jobs.cli.train import main

raise SystemExit(main())
