from pipelines.cli.precompute import main

raise SystemExit(main())
