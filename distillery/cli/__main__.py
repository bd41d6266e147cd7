from distillery.cli import main

raise SystemExit(main())
