from jobs.train.driver import main

raise SystemExit(main())
