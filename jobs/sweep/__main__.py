from jobs.sweep.driver import main

raise SystemExit(main())
