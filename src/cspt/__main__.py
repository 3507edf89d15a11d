from cspt.cli import main

raise SystemExit(main())
