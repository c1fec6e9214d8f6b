from pipelines.precompute.job import main

raise SystemExit(main())
