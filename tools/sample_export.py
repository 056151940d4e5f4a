"""A deterministic, DiscordChatExporter-shaped sample export: the demo's training data.

Real chat exports are private, so the demo trains on a synthetic one. It is written the way
DiscordChatExporter 2.47 writes JSON (2-space indent, its key order, ids as strings, nulls
written out, emoji outside the BMP as surrogate-pair escapes, partitions that each carry their
own preamble), so the loader meets the shape it meets in the wild. The two people write in
clearly different styles and "me" (``alex``) answers what was asked, so a small LoRA has a style
to learn and the evaluation can tell whether it learnt it. Everything comes from
``random.Random(seed)`` and no clock is read: the same arguments give byte-identical files.

Run ``python -m tools.sample_export`` from the repository root to regenerate the bundled sample
(``--out`` writes elsewhere). It lives outside the runtime package: the pipeline only reads
the files it wrote.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.pairs.pairing_config import SAMPLE_ME

DISCORD_EPOCH_MS = 1_420_070_400_000

#: The DM partner's display name, as it appears in the DM file name.
DM_PARTNER = "sam"
DM_CHANNEL_ID = "855575384304008197"
GUILD_ID = "929467687199883266"
GUILD_NAME = "Friends"
CATEGORY_ID = "929467687233437699"
CATEGORY_NAME = "Text Channels"
GENERAL_CHANNEL_ID = "929467687237632004"

#: The DM export was made without ``--utc`` on a machine in a UTC-5 zone (2.41+ writes local
#: time); the guild export was made with ``--utc``.
DM_OFFSET_MINUTES = -5 * 60
GUILD_OFFSET_MINUTES = 0


@dataclass(frozen=True)
class Person:
    """A Discord account as DCE resolves it at export time."""

    id: str
    name: str
    discriminator: str
    avatar_url: str
    is_bot: bool = False


def _default_avatar(user_id: str) -> str:
    return f"https://cdn.discordapp.com/embed/avatars/{(int(user_id) >> 22) % 6}.png"


ALEX = Person(
    "291274804919574979",
    SAMPLE_ME,  # "me": the name the demo pairs by
    "0000",
    "https://cdn.discordapp.com/avatars/291274804919574979/a3f9c1e07b2d4865c0e1f2a3b4c5d6e7.png?size=512",
)
SAM = Person(
    "474512070050754567",
    "sam",
    "0000",
    "https://cdn.discordapp.com/avatars/474512070050754567/5e8d2b1c9f0a47e3b6c2d1e0f9a8b7c6.png?size=512",
)
JORDAN = Person("646818001697493003", "jordan", "0000", _default_avatar("646818001697493003"))
DJ_BOT = Person(
    "708683455994560513",
    "DJ Bot",
    "4213",
    "https://cdn.discordapp.com/avatars/708683455994560513/0c7e4f2a9b1d3e5f7a8c6b4d2e0f1a3b.png?size=512",
    is_bot=True,
)
CASEY = Person("1025810404527563018", "casey", "0000", _default_avatar("1025810404527563018"))

#: "me" in the sample: the author whose replies the adapter should learn.
ME = ALEX

_ROLE_ADMIN = {"id": "929472073254871041", "name": "admin", "color": "#E67E22", "position": 3}
_ROLE_FRIENDS = {"id": "929472290775670785", "name": "friends", "color": "#3498DB", "position": 2}
_ROLE_BOT = {"id": "929812438893838338", "name": "DJ Bot", "color": None, "position": 1}


@dataclass(frozen=True)
class _Member:
    """How a person shows up in one channel: nickname, colour and roles depend on the guild."""

    person: Person
    nickname: str
    roles: tuple[dict, ...] = ()

    @property
    def color(self) -> str | None:
        return next((r["color"] for r in self.roles if r["color"] is not None), None)


_DM_MEMBERS = {
    "A": _Member(ALEX, ALEX.name),
    "S": _Member(SAM, "sam"),
}
_GUILD_MEMBERS = {
    "A": _Member(ALEX, ALEX.name, (_ROLE_ADMIN, _ROLE_FRIENDS)),
    "S": _Member(SAM, "sammy", (_ROLE_FRIENDS,)),
    "J": _Member(JORDAN, "jordan", (_ROLE_FRIENDS,)),
    "B": _Member(DJ_BOT, "DJ Bot", (_ROLE_BOT,)),
    "C": _Member(CASEY, "casey"),
}

# --------------------------------------------------------------------------------------------
# Conversation content
#
# A script is a list of steps "W: template", W the speaker (A alex, S sam, J jordan, B the bot,
# C casey). " || " separates alternative templates, "[a|b|]" picks one fragment, "{slot}" is
# filled from the topic's slots (alex gets them lowercased, without apostrophes), and in alex's
# lines " / " marks where he may split one thought over two quick messages. A template starting
# with "@op" is an event: @img/@vid (attachment, the rest is the caption), @link, @sticker,
# @call, @missed_call, @pin (pins the other person's last message), @rec (remember this
# recommendation), @callback (reply to an old recommendation), @cmd:W (app-command response for
# W), @join.
# --------------------------------------------------------------------------------------------


@dataclass
class _Topic:
    name: str
    weight: float
    slots: dict[str, list]
    scripts: list[list[str]]
    script_weights: list[float] | None = None


_FRIENDS = ["Jordan", "Priya", "Marco", "Lena", "Dev"]
_TIMES = ["7", "7:30", "8", "8:30", "9"]
_DAYS = ["Friday", "Saturday", "Sunday", "Thursday"]

_GAMES = [
    ("the new Zelda", "the water temple"),
    ("Elden Ring", "Malenia"),
    ("Hollow Knight", "the Mantis Lords"),
    ("Hades 2", "the Fields of Mourning"),
    ("Celeste", "chapter seven"),
    ("Baldur's Gate 3", "the House of Hope"),
    ("Sekiro", "the Guardian Ape"),
    ("Cuphead", "the dragon fight"),
    ("Lies of P", "the final boss"),
]
_COOP = [
    "Mario Kart",
    "Overcooked",
    "Minecraft",
    "Valheim",
    "It Takes Two",
    "Stardew Valley",
    "Lethal Company",
    "Deep Rock Galactic",
]
_NEW_GAMES = [
    "Balatro",
    "Outer Wilds",
    "Animal Well",
    "Dave the Diver",
    "Vampire Survivors",
    "Tears of the Kingdom",
    "Slay the Spire",
]
_DISHES = [
    "lasagna",
    "ramen",
    "banana bread",
    "chicken curry",
    "tacos",
    "mushroom risotto",
    "dumplings",
    "shakshuka",
    "pad thai",
    "carbonara",
    "chili",
    "crème brûlée",
]
_PROBLEMS = [
    ("too salty", "[prob too much soy sauce|u prob salted it twice|the stock is salty already]"),
    ("way too dry", "[prob cooked it too long|needs more sauce|oven was too hot prob]"),
    ("kind of bland", "[needs way more garlic|more salt and some lemon|toast the spices first]"),
    ("burnt on the bottom", "[heat was too high prob|gotta stir more|use a thicker pan]"),
]
_PLACES = [
    "the lake",
    "the new climbing gym",
    "the night market",
    "Riverside Park",
    "the flea market",
    "the botanical garden",
    "the arcade bar",
    "the café on Fifth Street",
]
_SONGS = [
    ("Motion Sickness", "Phoebe Bridgers"),
    ("The Less I Know the Better", "Tame Impala"),
    ("My Love Mine All Mine", "Mitski"),
    ("Holocene", "Bon Iver"),
    ("Dreams", "Fleetwood Mac"),
    ("Not Like Us", "Kendrick Lamar"),
    ("Get Lucky", "Daft Punk"),
    ("Not Strong Enough", "boygenius"),
    ("505", "Arctic Monkeys"),
    ("Weird Fishes", "Radiohead"),
    ("Texas Hold 'Em", "Beyoncé"),
]
_MONTHS = ["March", "May", "June", "September", "October", "December"]
_CALM = [
    "lofi beats",
    "the interstellar soundtrack",
    "nujabes",
    "brian eno",
    "some jazz piano",
    "the zelda soundtrack",
]
_SHOWS = [
    "Severance",
    "The Bear",
    "Shogun",
    "The Last of Us",
    "Arcane",
    "Andor",
    "Slow Horses",
    "Only Murders in the Building",
]
_MOVIES = [
    "Dune Part Two",
    "Past Lives",
    "Across the Spider-Verse",
    "Oppenheimer",
    "Challengers",
    "Inside Out 2",
    "The Wild Robot",
    "Everything Everywhere All at Once",
]
_CITIES = ["Lisbon", "Tokyo", "Montréal", "Mexico City", "Seattle", "Chicago", "Barcelona"]
_BOOKS = [
    "Project Hail Mary",
    "The Martian",
    "Piranesi",
    "Dune",
    "Klara and the Sun",
    "The Midnight Library",
    "Station Eleven",
    "Circe",
]
_LANGS = [("Python", "JavaScript"), ("Rust", "Go"), ("Swift", "Kotlin")]

_DM_TOPICS: list[_Topic] = [
    _Topic(
        "games",
        3.0,
        {
            "game|boss": _GAMES,
            "coop": _COOP,
            "new": _NEW_GAMES,
            "time": _TIMES,
            "friend": _FRIENDS,
        },
        [
            [
                "S: [Hey! |Okay, quick question. |]Did you finish {game} yet? [I am stuck on {boss} and about to give up.|I have been stuck on {boss} all week!|I cannot get past {boss} no matter what I try.]",
                "A: [yeah|yep|ya] finished it [sunday|last night] [lol|] / {boss} is [pain|so annoying|brutal] tbh"
                " || yeah beat it [yesterday|last week] / {boss} took like [20|30|40] tries 😂"
                " || @img:screenshot [yep|yeah] beat it [sunday|last night] / proof lol",
                "S: [Any tips?|Do you have any tips for me?|How did you finally beat it?] I keep dying [right at the end|in the second phase|to the same attack] and it is driving me crazy!",
                "A: [honestly|ngl|ok so] just [level up more|use the bow|dodge left not right|hug the wall] / [worked for me|thats how i did it]"
                " || [idk|no idea] i just got lucky tbh [😂|lol]"
                " || summon help lol / no shame in it",
            ],
            [
                "S: [Hey! |]Did you ever finish {game}? I started it [last week|on Sunday|a few days ago] and I am already stuck on {boss}.",
                "A: [nah|not yet] im stuck on {boss} too [lol|ngl|🙃]"
                " || [nah|no] gave up at {boss} [lol|tbh] / too hard for me",
                "S: [Okay, that makes me feel a lot better!|Oh good, so it is not just me!] Should we try to beat it together this weekend?",
                "A: yeah lets do it / saturday [night|afternoon] [works|is good]"
                " || ok deal / [u bring snacks|ill order pizza] lol",
            ],
            [
                "S: [Do you want to play|Are you up for some] {coop} tonight? I can [host|make the lobby] around {time} if that works for you!",
                "A: [yeah|yes|ya] im down for {coop} at {time}"
                " || [ok|sure] {time} works / ill hop on discord"
                " || yeah [def|for sure] / {time} is perfect",
                "S: [Perfect!|Great!|Yay!] Should I invite {friend} too, or [just the two of us this time|keep it small tonight]?",
                "A: invite {friend} [lol|] / the more the better"
                " || just us this time tbh / {friend} always rage quits lol",
            ],
            [
                "S: Are you free to play {coop} tonight? I have been [waiting all week to play with you|looking forward to it all day]!",
                "A: cant tonight [sadly|tbh] / [maybe tmrw|tmrw works tho]"
                " || [ugh|sorry] working late / [friday|sunday] maybe",
                "S: [No problem at all!|That is okay!|No worries!] Just message me when you are free and I will set everything up.",
                "A: [ok|sounds good] will do [lol|]",
            ],
            [
                "S: What are you playing these days? I need something new to get into[ :)|!|, I am so bored.]",
                "A: mostly {new} rn / its [so good|kinda addictive|really fun] ngl"
                " || {new} [again lol|still] / cant stop playing it",
                "S: Is it hard? You know I am terrible at anything that needs quick reflexes.",
                "A: [kinda hard at first|a bit hard at first] / but [u would like it|ud love it]"
                " || not that bad tbh / no reflexes needed lol",
            ],
            [
                "A: [yo|ok] {new} [is on sale|is like 10 bucks] rn / [u should get it|get it lol]",
                "S: Oh nice, thank you for telling me! Is it better on the computer or on the Switch?",
                "A: pc for sure / switch version lags [a bit|tbh]"
                " || switch is fine tbh / nice for the couch",
                "S: Okay, I just bought it! Add me when you are online tonight and show me how to start.",
                "A: [bet|ok] ill be on after [8|9] [lol|]",
            ],
            [
                "A: @img:screenshot",
                "A: [finally got|omg got] the [legendary sword|rarest drop|secret ending] [lol|😂]",
                "S: No way! How long did that take you? I have been trying for [days|a week]!",
                "A: like [five|six|eight] hours ngl [🙃|lol]"
                " || [way too long|too long] tbh / worth it tho",
            ],
        ],
        [3, 2, 3, 1.5, 2, 1.5, 1.2],
    ),
    _Topic(
        "cooking",
        2.5,
        {"dish": _DISHES, "problem|fix": _PROBLEMS, "day": _DAYS},
        [
            [
                "S: I tried making {dish} [yesterday|last night|for dinner] and it came out {problem}. [What did I do wrong?|Any idea what happened?|Where did I go wrong?]",
                "A: [lol|oh no|rip] {fix} / happens to me [all the time|a lot]"
                " || [hmm|ok] {fix} [lol|]",
                "S: [That makes sense!|Oh, that must be it!|Good to know!] I will try again this weekend and send you a picture of the result.",
                "A: [ok|yes] pls send pics [lol|] || cant wait lol / [good luck|u got this]",
            ],
            [
                "S: What are you making for dinner tonight? I need ideas, my fridge is almost empty!",
                "A: [prob|prolly|def] {dish} [lol|again lol] / [its easy|takes like 20 min]"
                " || [idk|no idea] yet / [maybe|prob] {dish} [lol|tbh]"
                " || @img:food making {dish} rn [lol|] / [its easy|takes 20 min]",
                "S: Can you send me the recipe? I want to try making it [this weekend|for my parents]!",
                "A: yeah ill send it later / its mostly vibes tho [😂|lol] || [sure|yeah] one sec",
                "A: @link:recipe",
            ],
            [
                "A: @img:food",
                "A: made {dish} [finally|for the first time] [lol|😂]",
                "S: That looks amazing! Did you use the recipe from your mom or a new one?",
                "A: [my moms|my moms recipe] / but i added [extra cheese|chili flakes|more garlic]"
                " || [new one|found a new one] online / [turned out ok|kinda proud tbh]",
            ],
            [
                "S: Do you want to cook together on {day}? I can bring all the ingredients for {dish}!",
                "A: [yeah|ya] [down|im in] / ill do dessert [lol|] || yes pls / ill bring wine lol",
                "S: Perfect! Come over around six, and please bring your big pot if you still have it.",
                "A: [ok|bet] / pot and wine coming lol",
            ],
            [
                "S: @img:food I made {dish} for the first time! I am so proud of myself!",
                "A: omg [looks so good|that looks amazing] / save me some lol",
                "S: Thank you! It took [three hours|all afternoon], but it was worth it. What should I cook next?",
                "A: [try|def try] {dish2} / its [easier than it looks|super easy]",
            ],
            [
                "S: @link:recipe",
                "S: Look at this recipe! Do you think we could make it together this weekend?",
                "A: [yeah|ya] looks easy enough / [saturday|sunday] works [lol|]",
            ],
        ],
        [3, 2.5, 1.6, 2, 1.5, 0.35],
    ),
    _Topic(
        "weekend",
        2.5,
        {"place": _PLACES, "time": _TIMES, "friend": _FRIENDS, "day": _DAYS},
        [
            [
                "S: Any plans for the weekend? The weather is supposed to be [really nice|sunny|perfect] on Saturday!",
                "A: [not really|nothing yet] [tbh|lol] / maybe [a hike|the farmers market|the beach]"
                " || [prob|prolly] just sleep [lol|tbh] / long week",
                "S: We should go to {place} if you are free! I have been wanting to go for weeks.",
                "A: [yeah|ya] down / what time u thinking",
                "S: How about around {time}? I can pick you up on the way if you want.",
                "A: {time} works / ill be ready [lol|] || perfect / text me when ur outside",
            ],
            [
                "A: u free [saturday|sunday|this weekend]",
                "S: I think so! I have [a dentist appointment|yoga] in the morning, but the afternoon is open. Why?",
                "A: [wanna|we should] [check out|try] {place} / heard its [good|nice|fun]",
                "S: [Yes, let us do it!|That sounds like so much fun!] Should I invite {friend} too?",
                "A: yeah invite {friend} [lol|] || sure / {friend} would love it",
            ],
            [
                "S: How was your weekend? Did you end up going to {place} in the end?",
                "A: yeah it was [fun|nice|so good] / [way too crowded|kinda cold] tho lol"
                " || nah ended up staying home [lol|tbh] / was too tired"
                " || @img:view yeah it was [so nice|great] / look at this lol",
                "S: [That sounds nice!|I am so glad!] I mostly cleaned my apartment and watched movies all day.",
                "A: honestly sounds like a great weekend [tbh|lol]",
            ],
        ],
        [3, 2, 2.5],
    ),
    _Topic(
        "music",
        2.0,
        {"song|artist": _SONGS, "month": _MONTHS, "calm": _CALM},
        [
            [
                "S: Have you heard the new {artist} album yet? I have had it on repeat all [morning|week]!",
                "A: [yeah|ya] its [so good|insane|kinda mid tbh] / [track 3|the last song|the first track] is [the best|my fav]"
                " || not yet lol / is it good",
                "S: Yes, it is so good! You have to listen to {song} first, it is my [favourite|favourite song on it].",
                "A: ok putting it on rn || ok adding it to my playlist [lol|]",
            ],
            [
                "S: Are you going to the {artist} concert in {month}? Tickets go on sale on Friday!",
                "A: [yeah def|omg yes] / if i can get tickets [lol|🙃]"
                " || [prob not|idk] / tickets are so expensive [tbh|lol]",
                "S: I will set an alarm and try to get two! Do you want floor or seats?",
                "A: floor obviously [😂|lol] || seats tbh / my back cant do floor lol",
            ],
            [
                "A: @link:music",
                "S: Oh, I love this song! Where did you find it?",
                "A: [spotify|the algorithm] [recommended it|put it on] lol / been looping it all day",
            ],
            [
                "S: Can you recommend some music for studying? Something calm without lyrics, please.",
                "A: [try|def try] {calm} / [works for me|thats my focus stuff] tbh"
                " || {calm} [always works|is the best] for that",
            ],
            [
                "S: @vid:concert The encore was incredible! I recorded the whole last song for you.",
                "A: omg [so jealous|im jealous] / the sound is so good [lol|]",
            ],
        ],
        [3, 2, 0.45, 2, 0.9],
    ),
    _Topic(
        "work",
        2.0,
        {"friend": _FRIENDS},
        [
            [
                "S: How is the new job going? Is your manager still making you do those long meetings every morning?",
                "A: yeah still 45 min standups [lol|🙃] / its fine tho"
                " || honestly better now / we moved them to async",
                "S: That sounds exhausting! Do you at least like the people on your team?",
                "A: [yeah|ya] theyre [nice|cool] / one guy microwaves fish tho [lol|😂]",
            ],
            [
                "A: ugh [the deploy broke|the build broke|prod went down] [again|this morning] [lol|]"
                " || @img:screenshot ugh [the build broke|prod is down] again / look at this",
                "S: Oh no! Was it your fault or someone else this time? :)",
                "A: [mine|kinda mine] [😂|lol] / forgot a config thing"
                " || not mine for once lol / but i had to fix it",
                "S: At least you fixed it! Are you still going to make it to dinner tonight?",
                "A: yeah [def|for sure] / might be like 10 min late",
            ],
            [
                "S: Are you working from home tomorrow? I was thinking we could get lunch near your office.",
                "A: [yeah|ya] wfh tmrw / [friday|thursday] works for lunch tho"
                " || in office tmrw / lunch at 12 works",
            ],
            [
                "S: Did you ask for the raise yet? You deserve it after everything you did this year!",
                "A: [not yet|kinda scared lol] / [maybe next week|waiting for reviews]"
                " || yeah they said [maybe in march|next quarter] 🙃",
                "S: You should definitely ask! I can help you practise what to say if you want.",
                "A: ok that would help ngl / [tmrw|this weekend] maybe",
            ],
        ],
        [2.5, 2, 2, 1.5],
    ),
    _Topic(
        "movies",
        2.0,
        {"show": _SHOWS, "movie": _MOVIES, "day": _DAYS, "time": _TIMES},
        [
            [
                "S: Have you watched {show} yet? Everyone at [work|my book club] keeps talking about it!",
                "A: [yeah|ya] watched it [last week|over the weekend] / [so good|kinda overrated tbh|actually insane]"
                " || yeah binged it in two days [lol|😂]",
                "S: Okay, no spoilers please! I am only on the [second|third] episode.",
                "A: [lol ok|ok ok] my lips are sealed / the ending tho 🙃",
            ],
            [
                "S: Do you want to see {movie} on {day}? There is a showing at {time} near your place.",
                "A: [yeah|ya] {time} works / ill get the popcorn [lol|]"
                " || yes [been waiting for that one|ive been waiting for it] lol",
                "S: Great, I will book the tickets now. Do you want to sit in the middle or at the back?",
                "A: back row always [lol|😂] || middle pls / back hurts my neck",
            ],
            [
                "S: @rec You have to watch {show}! I think you would really love it, especially the music.",
                "A: ok adding it to my list [lol|] || ok ok ill start it [tonight|this weekend]",
            ],
            [
                "S: @link:trailer",
                "S: Did you see the trailer for {movie}? I am so excited, it looks amazing!",
                "A: [omg yes|yeah] / [looks so good|watched it like 3 times] [lol|]",
            ],
        ],
        [3, 2, 1, 0.4],
    ),
    _Topic(
        "trip",
        1.5,
        {"city": _CITIES, "time": _TIMES, "day": _DAYS},
        [
            [
                "S: Are you packed for the trip yet? Our flight to {city} leaves at {time} on {day}!",
                "A: [lol no|not even close] / will pack the night before [like always|as usual] 🙃",
                "S: Please do not forget your passport this time! [I am serious.|I am not joking.]",
                "A: lol that was one time / ok ok setting a reminder",
            ],
            [
                "S: What do you want to do first when we get to {city}? I made a list of restaurants!",
                "A: food first obviously / then [the museum|the beach|just walk around] [lol|]"
                " || send the list / [ill pick|i pick] the [cheapest|best] one lol",
            ],
            [
                "S: @img:view Look at this view from my hotel window in {city}! I cannot believe I am finally here.",
                "A: [wow|omg] / ok im jealous [lol|😂]",
                "S: I will bring you back something nice! Do you want chocolate or a silly magnet?",
                "A: silly magnet obviously [lol|😂]",
            ],
            [
                "S: How was {city}? I want to hear everything, and I want to see all the photos!",
                "A: [so good|amazing] / ate way too much [lol|tbh]"
                " || tiring but fun / [the food|the coffee] was insane"
                " || @img:view [so good|amazing] / this was from the hotel lol",
            ],
        ],
        [2, 2, 1.3, 1.5],
    ),
    _Topic(
        "cat",
        2.0,
        {"day": _DAYS},
        [
            [
                "S: How is Noodle doing? Is she still knocking everything off the table?",
                "A: yeah broke a [mug|glass|plant pot] this morning [lol|😂] / shes a menace"
                " || shes [good|fine] / sleeping on my keyboard rn [lol|😂]"
                " || @img:cat shes [good|fine] / look at her lol",
                "S: She is so [naughty|cute]! Please give her a little treat from me :)",
                "A: she says thanks [lol|] || she already ate 3 today lol",
            ],
            [
                "A: @img:cat",
                "A: she [fell asleep in the sink|got in the laundry basket|sat in a box] again",
                "S: That is so cute! Why does she always pick the weirdest places to sleep?",
                "A: [no idea|idk] / shes a weird cat [lol|tbh]",
            ],
            [
                "S: Do you need me to feed Noodle while you are away next week? I can stop by after work!",
                "A: omg yes pls / key is under the plant [lol|]",
                "S: Perfect! How much food does she get, and how often should I feed her?",
                "A: one scoop twice a day / she will lie about it [😂|lol]",
            ],
            [
                "S: Did Noodle get her shots at the vet? I hope she was not too scared!",
                "A: yeah she hissed at the vet [lol|😂] / but shes fine now"
                " || @img:cat she was so mad lol / shes fine now",
            ],
            [
                "A: @vid:cat",
                "A: she [learned to open the cupboard|chases her tail every morning] [lol|🙃]",
                "S: Oh no, she is getting too smart! You are going to need child locks on everything.",
                "A: [already ordered some|ordering some rn] [lol|]",
            ],
        ],
        [2.5, 1.6, 1.5, 1.5, 0.8],
    ),
    _Topic(
        "coding",
        1.5,
        {"a|b": _LANGS},
        [
            [
                "S: Can you help me with my Python homework? It keeps saying index out of range and I do not understand why.",
                "A: ur loop prob goes one too far / off by one [lol|tbh]"
                " || send the code / prob an off by one thing",
                "S: That was it! How did you know that so fast?",
                "A: made that mistake like a million times [😂|lol]",
            ],
            [
                "S: Which language should I learn first, {a} or {b}? I want to build something small for fun.",
                "A: {a} first [tbh|imo] / [easier to start|more tutorials]"
                " || [honestly|ngl] {b} / [more fun|less setup] [lol|]",
            ],
            [
                "A: spent [3|4|5] hours on a bug / it was a typo [lol|🙃]",
                "S: Oh no, that is the worst! Was it at least an interesting typo?",
                "A: wrote usr instead of user 🙃 || missing comma [lol|😂] / i hate it here",
            ],
            [
                "S: Is it hard to learn git? Everyone keeps telling me I should use it for my projects.",
                "A: kinda confusing at first / ill show u next time [lol|]"
                " || not really / just learn like 5 commands lol",
            ],
        ],
        [1.5, 1.5, 1.5, 1.5],
    ),
    _Topic(
        "gym",
        1.2,
        {"day": _DAYS, "time": ["6", "6:30", "7"]},
        [
            [
                "S: Did you go to the gym today? I am trying to go three times a week now!",
                "A: [yeah|ya] leg day / cant walk [lol|😂]"
                " || nah skipped today tbh / going tmrw"
                " || @img:screenshot [yeah|ya] new pr / [so proud|cant feel my arms] lol",
                "S: Good job! Do you have any tips for someone who gets bored after twenty minutes?",
                "A: [podcasts|music] [help a lot|save me] / and go with a friend",
            ],
            [
                "S: Do you want to go running with me on {day} morning? Around {time}, before it gets too hot.",
                "A: {time} is early [lol|] / but ok im in || too early for me tbh / maybe evening",
            ],
        ],
        [1.5, 1],
    ),
    _Topic(
        "books",
        1.0,
        {"book": _BOOKS, "book2": _BOOKS},
        [
            [
                "S: What are you reading right now? I just finished {book} and I need something new!",
                "A: {book2} rn / [kinda slow|really good|so weird] so far"
                " || nothing rn [lol|tbh] / need a rec too",
                "S: I have heard good things about {book2}! Would you lend it to me when you are done?",
                "A: yeah [def|ofc] / [almost done|done by friday] [lol|]",
            ],
            [
                "S: Have you read {book}? My book club picked it for this month and I am not sure yet.",
                "A: yeah [loved it|read it last year] / the ending is [so good|wild] [lol|]"
                " || nah not yet / heard its good tho",
            ],
            [
                "S: @img:book This is the book I was telling you about! Is the cover not beautiful?",
                "A: [ok thats a nice cover|so pretty] / is it good tho [lol|]",
            ],
        ],
        [1.5, 1, 0.5],
    ),
]

#: (earliest local hour, latest local hour, script): "Good morning!" is not sent at 11 pm.
_GREETINGS: list[tuple[int, int, list[str]]] = [
    (
        15,
        24,
        [
            "S: Hey! How was your day? Anything [exciting happen at work|fun happen today]?",
            "A: pretty chill tbh / just meetings [lol|] || long day ngl / [so tired|need a nap] [lol|]",
        ],
    ),
    (
        6,
        11,
        [
            "S: Good morning! Did you sleep well? I had the strangest dream last night.",
            "A: [not really|kinda] [lol|] / what was the dream",
            "S: I dreamed that Noodle could talk and she was very rude to me!",
            "A: [lol|ok] thats just noodle tho 😂",
        ],
    ),
    (
        0,
        24,
        [
            "A: [yo|hey] whats up",
            "S: Not much! I am just making some tea and watching the rain. How about you?",
            "A: same [lol|] / just chilling || [nothing|not much] / [bored|so bored] [lol|tbh]",
        ],
    ),
    (
        0,
        24,
        [
            "S: Hi! Are you [awake|there]? I have something funny to tell you :)",
            "A: [ya|yeah] whats up [lol|]",
            "S: [I tried to teach my neighbour's dog to give a high five|I waved back at someone who was waving at the person behind me], and [it sat on my foot instead|it was so embarrassing]!",
            "A: [lol|omg] [thats amazing|i love that] [😂|] || [lmao|lol] ur so funny",
        ],
    ),
]

#: (weight, local hours it fits, script)
_CLOSERS: list[tuple[float, range, list[str]]] = [
    (
        3,
        range(21, 27),
        [
            "S: Okay, I have to go to sleep now. Talk to you tomorrow!",
            "A: ok [gn|night] talk tmrw || night night [lol|]",
        ],
    ),
    (
        2,
        range(7, 21),
        ["S: I have to run, my bus is here! Talk later :)", "A: ok later [lol|] || ok bye [lol|]"],
    ),
    (
        2,
        range(0, 27),
        ["A: ok gtg / talk later", "S: Bye! Talk soon, and say hi to Noodle for me :)"],
    ),
    (0.25, range(21, 27), ["S: Okay, I have to go to sleep now. Good night!", "A: @sticker"]),
    (0.25, range(0, 27), ["A: ok gtg / talk later", "S: @sticker"]),
]

#: Scheduled a fixed number of times at random points of the DM, not drawn by weight.
_SPECIALS: dict[str, tuple[int, list[str]]] = {
    "email": (
        1,
        [
            "S: My new email is sam.rivera@example.com, can you send me the photos from the trip there?",
            "A: yeah sending them now || ok [will do|sending] [lol|]",
        ],
    ),
    "phone": (
        1,
        [
            "S: My phone is broken, but you can reach me at +1 (555) 010-4477 until Friday!",
            "A: ok saved it [lol|] || ok got it / hope u get a new one soon",
        ],
    ),
    "token": (
        1,
        [
            "S: Is this what a bot token looks like? {token} I found it in my old project folder.",
            "A: yes dont post that anywhere lol / reset it rn",
        ],
    ),
    "my_email": (
        1,
        [
            "S: What email should I use for the shared calendar? I want to add you to it.",
            "A: alex.chen@example.org / the work one is a mess lol",
        ],
    ),
    "pin_trip": (
        1,
        [
            "S: Here is the address of the apartment in {city}: 14 Harbor Lane, apartment 3B. Check in is at three!",
            "A: @pin",
            "A: pinned it so we dont lose it",
        ],
    ),
    "pin_plan": (
        1,
        [
            "S: Here is the plan for Saturday: brunch at eleven, then the museum, then dinner at seven. Does that sound good?",
            "A: @pin",
            "A: sounds perfect / pinned it [lol|]",
        ],
    ),
    "call": (
        7,
        [
            "S: Can I call you for a minute? It is much easier to explain by voice.",
            "A: yeah sure one sec || ya calling u",
            "A: @call",
            "S: Thank you, that helped a lot! I owe you a coffee.",
            "A: np anytime [lol|] || haha u owe me like 5 coffees now",
        ],
    ),
    "call_sam": (
        3,
        [
            "S: @call",
            "S: Sorry, my connection kept dropping. Can we finish the conversation tomorrow?",
            "A: yeah np / [tmrw after work|tmrw morning] works",
        ],
    ),
    "missed_call": (
        2,
        [
            "S: @missed_call",
            "A: sorry missed ur call / whats up",
            "S: No worries! I just wanted to ask if you are still coming to dinner tonight.",
            "A: yeah [def|for sure] / omw at [7|8]",
        ],
    ),
    "birthday": (
        1,
        [
            "S: Happy birthday!!! Do you have any fun plans for tonight? :)",
            "A: omg thank u / just dinner w family [lol|]",
        ],
    ),
}
_CALLBACK = [
    "A: @callback finally watched {show} [lol|] / u were right its so good",
    "S: I told you! Which character was your favourite?",
    "A: [the main guy|the villain tbh|the sister] / [no contest|obviously] [lol|]",
]

_GUILD_SCRIPTS: list[list[str]] = [
    [
        "J: [game night|board game night] on {day}? I can host this time",
        "A: [yeah|ya] im in / what are we playing || down / [ill bring snacks|what time tho]",
        "S: I am in too! Can we start with {coop} this time, please?",
        "J: [sure|fine by me], {coop} first and then maybe codenames",
        "A: bet ill bring chips [lol|] || ok {coop} it is / i call player one",
    ],
    [
        "J: [ok queueing some music|music time]",
        "B: @cmd:J Queued **{song}** by {artist}.",
        "B: Now playing: **{song}** by {artist}",
        "A: ok this one slaps [lol|ngl] || [good pick|great pick] / love {artist}",
        "S: [Jordan always has the best taste in music!|Oh, I love this one!] Can we have something calmer after this one?",
        "J: sure, I'll queue something slower",
    ],
    [
        "S: [Can someone play some music?|It is way too quiet in here!] I need something to clean to.",
        "B: @cmd:S Queued **{song}** by {artist}.",
        "B: Now playing: **{song}** by {artist}",
        "A: [cleaning music lol|good choice] / {artist} always works",
    ],
    [
        "B: Now playing: **{song}** by {artist}",
        "B: @cmd:A Skipped **{song}**.",
        "J: hey, I liked that one",
        "A: we heard it like 4 times today [lol|😂] || it was on repeat all day lol",
    ],
    [
        "S: Does anyone want to get brunch on {day}? I found a new place downtown with amazing pancakes!",
        "J: I'm in, what time?",
        "A: [down|im down] / 11 works for me || yes pls / [anything after 10|not before 11 lol]",
        "S: Perfect, I will book a table for three at eleven! :)",
    ],
    [
        "J: alex, did you ever fix your [wifi|internet] issue?",
        "A: [yeah|ya] it was the router [lol|] / had to reset it || nope still broken lol / on my phone rn",
        "J: [nice|ugh], mine has been acting up too",
        "A: turn it off and on [lol|] / works every time",
    ],
    [
        "J: @img:meme",
        "J: [this is literally us every monday|me after one workout|alex explaining git to sam]",
        "A: [lol|omg] too real [😂|] || [lmao|lol] why is this so accurate",
    ],
    [
        "S: Movie night at my place on {day}? I was thinking we could watch {movie}!",
        "J: [sounds good|works for me], I can bring snacks",
        "A: yeah down / havent seen it yet [lol|] || im in / ill bring drinks",
    ],
    [
        "J: anyone know a good laptop for coding? budget is around [1000|1200]",
        "A: [macbook air tbh|thinkpad t14 imo] / battery is great",
        "J: thanks, I'll check it out",
    ],
    [
        "A: @jordan u still have my switch controller [lol|] || @jordan did u take my charger lol",
        "J: oh yeah, I'll bring it on {day}",
    ],
    [
        "S: Has anyone tried the new bubble tea place next to the station? The line was huge yesterday!",
        "J: not yet, is it good?",
        "A: [yeah|ya] went [monday|last week] / get the brown sugar one",
    ],
    [
        "J: what's everyone playing this weekend?",
        "A: {new} [again lol|probably] / cant stop",
        "S: I am finally trying {new} because Alex would not stop talking about it!",
    ],
    [
        "J: does anyone have a ladder I could borrow on {day}?",
        "A: [yeah|ya] i have one / come grab it whenever",
        "S: Alex is the only one of us with real tools! :)",
    ],
    [
        "S: @img:cat Look who came to visit me today! Noodle is staying over while Alex is away.",
        "J: omg hi noodle",
        "A: shes gonna be so spoiled [lol|] / dont give her cheese",
    ],
]


# --------------------------------------------------------------------------------------------
# Rendering text
# --------------------------------------------------------------------------------------------

_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_SPACES = re.compile(r"\s+")
_ALEX_SWAPS = (
    (re.compile(r"\byou\b"), "u", 0.6),
    (re.compile(r"\byour\b"), "ur", 0.5),
    (re.compile(r"\bprobably\b"), "prob", 0.7),
    (re.compile(r"\btomorrow\b"), "tmrw", 0.7),
    (re.compile(r"\bright now\b"), "rn", 0.7),
    (re.compile(r"\bokay\b"), "ok", 0.8),
    (re.compile(r"\bgoing to\b"), "gonna", 0.8),
    (re.compile(r"\bwant to\b"), "wanna", 0.8),
    (re.compile(r"\bplease\b"), "pls", 0.6),
    (re.compile(r"\bthough\b"), "tho", 0.9),
)
_ALEX_MARKERS = ("lol", "tbh", "ngl", "haha", "lmao", "😂", "🙃")
_ALEX_TAILS = ("lol", "lol", "lol", "tbh", "ngl", "haha", "lmao", "😂")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _expand(template: str, rng: random.Random) -> str:
    """Resolve every ``[a|b|c]`` group to one of its options."""
    return _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)


def _alex_form(value: object) -> str:
    return str(value).lower().replace("'", "")


def _fill(template: str, slots: dict[str, str], who: str, rng: random.Random) -> str:
    values = {k: _alex_form(v) for k, v in slots.items()} if who == "A" else slots
    return _SPACES.sub(" ", _expand(template.format(**values), rng)).strip()


def _alex_pieces(text: str, rng: random.Random) -> list[str]:
    """alex's texting habits: abbreviations, a trailing ``lol``/emoji, thoughts split in two."""
    for pattern, short, p in _ALEX_SWAPS:
        if rng.random() < p:
            text = pattern.sub(short, text)
    pieces = [p.strip() for p in text.split(" / ") if p.strip()]
    if not any(marker in text for marker in _ALEX_MARKERS) and rng.random() < 0.2:
        pieces[-1] = f"{pieces[-1]} {rng.choice(_ALEX_TAILS)}"
    if len(pieces) > 1 and all(len(p.split()) > 1 for p in pieces) and rng.random() < 0.35:
        return pieces
    return [" ".join(pieces)]


def _sam_pieces(text: str, rng: random.Random) -> list[str]:
    """sam mostly sends one message, sometimes one sentence at a time."""
    sentences = _SENTENCE.split(text)
    if len(sentences) > 1 and rng.random() < 0.12:
        if len(sentences) > 3:
            sentences = [*sentences[:2], " ".join(sentences[2:])]
        return sentences
    return [text]


def _check_style(who: str, text: str) -> None:
    """Fail loudly when a template breaks the style the demo is supposed to learn."""
    if not text or text.startswith(("http", "@")):
        return
    if who == "A" and (text != text.lower() or text.endswith(".") or "'" in text):
        raise ValueError(f"alex's line breaks his style: {text!r}")
    if who == "S" and not text[0].isupper():
        raise ValueError(f"sam's line breaks sam's style: {text!r}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------------------------
# DCE JSON pieces
# --------------------------------------------------------------------------------------------

_EMOJI_CODES = {
    "😂": "joy",
    "🙃": "upside_down",
    "👍": "thumbsup",
    "🔥": "fire",
    "😭": "sob",
    "👀": "eyes",
    "🎉": "tada",
}
_STICKERS = [
    ("816087792291282944", "Wave", "Lottie"),
    ("749052944682582036", "Good Night", "Png"),
    ("1062829410133196800", "cat vibing", "Apng"),
    ("781324722394103808", "Thumbs Up", "Png"),
]


def _snowflake(ms: int, low: int) -> str:
    return str(((ms - DISCORD_EPOCH_MS) << 22) | (low & 0x3FFFFF))


def _iso(ms: int, offset_minutes: int) -> str:
    """``DateTimeOffset`` as Utf8JsonWriter writes it: trailing zeros of the fraction trimmed."""
    tz = timezone(timedelta(minutes=offset_minutes))
    local = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(tz)
    fraction = f"{ms % 1000:03d}".rstrip("0")
    return _format_local(local, fraction, offset_minutes)


def _iso_ticks(ticks_100ns: int, offset_minutes: int) -> str:
    """Same with 100 ns ticks, as ``exportedAt`` (taken from the clock) has 7 fraction digits."""
    tz = timezone(timedelta(minutes=offset_minutes))
    local = datetime.fromtimestamp(ticks_100ns // 10_000_000, tz=UTC).astimezone(tz)
    fraction = f"{ticks_100ns % 10_000_000:07d}".rstrip("0")
    return _format_local(local, fraction, offset_minutes)


def _format_local(local: datetime, fraction: str, offset_minutes: int) -> str:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    frac = f".{fraction}" if fraction else ""
    return f"{local:%Y-%m-%dT%H:%M:%S}{frac}{sign}{hours:02d}:{minutes:02d}"


def _emoji_json(char: str) -> dict:
    codepoints = "-".join(f"{ord(c):x}" for c in char)
    return {
        "id": "",
        "name": char,
        "code": _EMOJI_CODES[char],
        "isAnimated": False,
        "imageUrl": f"https://cdn.jsdelivr.net/gh/twitter/twemoji@latest/assets/svg/{codepoints}.svg",
    }


def _inline_emojis(content: str) -> list[dict]:
    seen: list[str] = []
    for char in content:
        if char in _EMOJI_CODES and char not in seen:
            seen.append(char)
    return [_emoji_json(c) for c in seen]


def _user_json(member: _Member, *, with_roles: bool = True) -> dict:
    user: dict = {
        "id": member.person.id,
        "name": member.person.name,
        "discriminator": member.person.discriminator,
        "nickname": member.nickname,
        "color": member.color,
        "isBot": member.person.is_bot,
    }
    if with_roles:
        user["roles"] = [dict(r) for r in sorted(member.roles, key=lambda r: -r["position"])]
    user["avatarUrl"] = member.person.avatar_url
    return user


_NEEDS_ESCAPE = re.compile(r"[^\x00-\x7e]")
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


def _escape_like_dce(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"
    if unicodedata.category(char) in _ESCAPED_CATEGORIES:
        return f"\\u{code:04X}"
    return char


def dumps_like_dce(document: dict) -> bytes:
    """JSON bytes as DCE writes them (``UnsafeRelaxedJsonEscaping``, indented, no final newline).

    Printable BMP text stays raw; characters outside the BMP become upper-case surrogate-pair
    escapes, and invisible/space-like characters are escaped as ``\\uXXXX``.
    """
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _NEEDS_ESCAPE.sub(_escape_like_dce, text).encode("utf-8")


# --------------------------------------------------------------------------------------------
# One channel's timeline
# --------------------------------------------------------------------------------------------


@dataclass
class _Posted:
    who: str
    msg: dict
    turn: int


@dataclass
class _Channel:
    """Accumulates messages of one channel with increasing timestamps and snowflakes."""

    rng: random.Random
    channel_id: str
    guild_id: str | None
    offset_minutes: int
    members: dict[str, _Member]
    now_ms: int
    messages: list[dict] = field(default_factory=list)
    _increment: int = 0

    def member(self, who: str) -> _Member:
        return self.members[who]

    def new_id(self, ms: int) -> str:
        self._increment = (self._increment + 1) & 0xFFF
        worker = self.rng.randrange(1, 4)
        return _snowflake(ms, (worker << 17) | (self.rng.randrange(2) << 12) | self._increment)

    def advance(self, seconds: float) -> int:
        step = max(1000, int(seconds * 1000) + self.rng.randrange(1000))
        self.now_ms += step
        if self.rng.random() < 0.015:  # a whole second: the timestamp has no fraction at all
            self.now_ms += (1000 - self.now_ms % 1000) % 1000
        return self.now_ms

    def iso(self, ms: int) -> str:
        return _iso(ms, self.offset_minutes)

    def local_hour(self) -> int:
        return ((self.now_ms // 1000 + self.offset_minutes * 60) // 3600) % 24

    def post(
        self,
        who: str,
        *,
        kind: str = "Default",
        content: str = "",
        call_end_ms: int | None = None,
        attachments: Sequence[dict] = (),
        embeds: Sequence[dict] = (),
        stickers: Sequence[dict] = (),
        mentions: Sequence[str] = (),
        reference: dict | None = None,
        interaction: dict | None = None,
    ) -> dict:
        ms = self.now_ms
        msg = {
            "id": self.new_id(ms),
            "type": kind,
            "timestamp": self.iso(ms),
            "timestampEdited": None,
            "callEndedTimestamp": self.iso(call_end_ms) if call_end_ms is not None else None,
            "isPinned": False,
            "content": content,
            "author": _user_json(self.member(who)),
            "attachments": list(attachments),
            "embeds": list(embeds),
            "stickers": list(stickers),
            "reactions": [],
            "mentions": [_user_json(self.member(w)) for w in mentions],
        }
        if reference is not None:
            msg["reference"] = reference
        if interaction is not None:
            msg["interaction"] = interaction
        msg["inlineEmojis"] = _inline_emojis(content)
        self.messages.append(msg)
        return msg

    def reference_to(self, msg: dict) -> dict:
        return {
            "type": "Default",
            "messageId": msg["id"],
            "channelId": self.channel_id,
            "guildId": self.guild_id,
        }

    def attachment(self, kind: str) -> dict:
        rng = self.rng
        local = datetime.fromtimestamp(self.now_ms / 1000, tz=UTC) + timedelta(
            minutes=self.offset_minutes
        )
        stamp = f"{local:%Y%m%d_%H%M%S}"
        if kind == "vid":
            name, size = f"VID_{stamp}.mp4", rng.randrange(2_000_000, 24_000_000)
        elif kind in ("screenshot", "meme"):
            name = (
                "image.png" if rng.random() < 0.5 else f"Screenshot_{local:%Y-%m-%d-%H-%M-%S}.png"
            )
            size = rng.randrange(40_000, 1_400_000)
        else:
            name = (
                f"IMG_{stamp}.jpg"
                if rng.random() < 0.6
                else f"PXL_{stamp}{rng.randrange(1000):03d}.jpg"
            )
            size = rng.randrange(180_000, 3_600_000)
        att_id = self.new_id(self.now_ms - rng.randrange(800, 4000))
        expires = self.now_ms // 1000 + 14 * 86400
        signature = "".join(rng.choice("0123456789abcdef") for _ in range(64))
        url = (
            f"https://cdn.discordapp.com/attachments/{self.channel_id}/{att_id}/{name}"
            f"?ex={expires:08x}&is={expires - 14 * 86400:08x}&hm={signature}&"
        )
        return {"id": att_id, "url": url, "fileName": name, "fileSizeBytes": size}

    def sticker(self) -> dict:
        sticker_id, name, fmt = self.rng.choice(_STICKERS)
        ext = {"Lottie": "json", "Gif": "gif"}.get(fmt, "png")
        return {
            "id": sticker_id,
            "name": name,
            "format": fmt,
            "sourceUrl": f"https://media.discordapp.net/stickers/{sticker_id}.{ext}",
        }


def _link(kind: str, slots: dict[str, str], rng: random.Random) -> tuple[str, dict]:
    if kind == "music":
        url = f"https://example.com/listen/{_slug(slots['song'])}"
        title, description = f"{slots['song']} - {slots['artist']}", "Listen on Example Music."
    elif kind == "recipe":
        url = f"https://example.com/recipes/{_slug(slots['dish'])}"
        title, description = f"The easiest {slots['dish']} recipe", "Ready in 30 minutes."
    else:
        video = "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            for _ in range(11)
        )
        url = f"https://example.com/watch?v={video}"
        title, description = f"{slots['movie']} | Official Trailer", ""
    embed = {
        "title": title,
        "url": url,
        "timestamp": None,
        "description": description,
        "images": [],
        "fields": [],
        "inlineEmojis": [],
    }
    return url, embed


def _pick_slots(spec: dict[str, list], rng: random.Random) -> dict[str, str]:
    slots: dict[str, str] = {}
    for key, options in spec.items():
        value = rng.choice(options)
        if "|" in key:
            slots.update(zip(key.split("|"), value, strict=True))
        else:
            slots[key] = value
    return slots


@dataclass
class _Conversation:
    """Turns scripts into messages: timing, bursts, replies, calls, pins, attachments."""

    chan: _Channel
    reply_rates: dict[str, float]  # per human speaker: how often a new turn uses "reply"
    recommendations: list[tuple[dict, dict[str, str]]] = field(default_factory=list)
    session: list[_Posted] = field(default_factory=list)
    turn: int = 0

    def start_session(self, gap_hours: float) -> None:
        chan, rng = self.chan, self.chan.rng
        chan.advance(gap_hours * 3600)
        local_hour = chan.local_hour()
        if 1 <= local_hour < 8:  # nobody texts at 4 am: move to the morning
            chan.advance((8 - local_hour) * 3600 + rng.uniform(0, 3 * 3600))
        self.session = []
        self.turn = 0

    def play(
        self, script: list[str], slots: dict[str, str], callback_to: dict | None = None
    ) -> None:
        for i, step in enumerate(script):
            who, _, body = step.partition(": ")
            template = self.chan.rng.choice(body.split(" || "))
            self.say(who, template, slots, opening=i == 0, callback_to=callback_to)

    def say(
        self,
        who: str,
        template: str,
        slots: dict[str, str],
        *,
        opening: bool = False,
        callback_to: dict | None = None,
    ) -> None:
        """One line of a script: an event, or text sent as one message or a quick burst."""
        chan, rng = self.chan, self.chan.rng
        op = arg = ""
        if template.startswith("@"):
            head, _, template = template.partition(" ")
            op, _, arg = head[1:].partition(":")
        text = _fill(template, slots, who, rng) if template else ""
        _check_style(who, text)

        if op in ("call", "missed_call"):
            self._call(who, missed=op == "missed_call")
            return
        if op == "pin":
            target = next(p.msg for p in reversed(self.session) if p.who != who)
            target["isPinned"] = True
            self._emit(who, "Pinned a message.", kind="ChannelPinnedMessage", reference_to=target)
            return
        if op == "join":
            self._emit(who, "Joined the server.", kind="GuildMemberJoin")
            return
        if op == "cmd":
            self._emit("B", text, kind="20", interaction_by=arg)
            return
        if op == "sticker":
            self._emit(who, "", stickers=[chan.sticker()])
            return
        if op == "link":
            url, embed = _link(arg, slots, rng)
            self._emit(who, url, embeds=[embed])
            return

        if not text:
            pieces = [""]
        elif who == "A":
            pieces = _alex_pieces(text, rng)
        elif who == "S":
            pieces = _sam_pieces(text, rng)
        else:
            pieces = [text]
        first: dict = {"may_reply": not opening, "new_topic": opening}
        if op in ("img", "vid"):
            first["attachments"] = [chan.attachment("vid" if op == "vid" else arg)]
        if op == "callback" and callback_to is not None:
            first.update(kind="Reply", reference_to=callback_to)
        if op == "jordan":  # DCE renders the <@id> mention as @nickname and lists the user
            pieces[0] = f"@jordan {pieces[0]}"
            first["mentions"] = ("J",)
        for i, piece in enumerate(pieces):
            msg = self._emit(who, piece, burst=i > 0, **(first if i == 0 else {}))
            if op == "rec":
                self.recommendations.append((msg, dict(slots)))

    def _gap_before(self, who: str, text: str, burst: bool, new_topic: bool = False) -> float:
        rng = self.chan.rng
        if not self.session:
            return 0.0
        if burst:
            return rng.uniform(1.0, 8.0)
        if self.session[-1].who == who:
            # moving on to something else takes a pause, so it reads as a new turn
            return rng.uniform(90.0, 400.0) if new_topic else rng.uniform(5.0, 45.0)
        return min(420.0, 5.0 + 0.3 * len(text) + rng.expovariate(1 / 45))

    def _reply_target(self, who: str) -> dict | None:
        """The message this new turn answers, picked as someone pressing Discord's reply button."""
        rng = self.chan.rng
        last = self.session[-1]
        if last.who == who or last.who not in self.reply_rates:
            return None
        candidates = [
            p.msg
            for p in self.session
            if p.turn == last.turn and p.msg["type"] in ("Default", "Reply") and p.msg["content"]
        ]
        if not candidates:
            return None
        # in a burst the answer often goes to its first message: not the adjacent one
        return candidates[-1] if rng.random() < 0.6 else candidates[0]

    def _emit(
        self,
        who: str,
        content: str,
        *,
        kind: str = "Default",
        burst: bool = False,
        may_reply: bool = False,
        new_topic: bool = False,
        reference_to: dict | None = None,
        mentions: Sequence[str] = (),
        interaction_by: str | None = None,
        attachments: Sequence[dict] = (),
        embeds: Sequence[dict] = (),
        stickers: Sequence[dict] = (),
    ) -> dict:
        chan, rng = self.chan, self.chan.rng
        new_turn = not self.session or self.session[-1].who != who
        if new_turn:
            self.turn += 1
        if (
            may_reply
            and new_turn
            and self.session
            and rng.random() < self.reply_rates.get(who, 0.0)
            and (target := self._reply_target(who)) is not None
        ):
            kind, reference_to = "Reply", target
        chan.advance(self._gap_before(who, content, burst, new_topic))
        if kind == "Reply" and reference_to is not None and rng.random() < 0.5:
            # replying with the ping on lists the replied-to author among the mentions
            replied = next(
                k for k, m in chan.members.items() if m.person.id == reference_to["author"]["id"]
            )
            if replied not in mentions:
                mentions = (*mentions, replied)
        interaction = None
        if interaction_by is not None:
            interaction = {
                "id": chan.new_id(chan.now_ms - rng.randrange(300, 1500)),
                "name": "skip" if content.startswith("Skipped") else "play",
                "user": _user_json(chan.member(interaction_by)),
            }
        msg = chan.post(
            who,
            kind=kind,
            content=content,
            attachments=attachments,
            embeds=embeds,
            stickers=stickers,
            mentions=mentions,
            reference=chan.reference_to(reference_to) if reference_to is not None else None,
            interaction=interaction,
        )
        self.session.append(_Posted(who, msg, self.turn))
        return msg

    def _call(self, who: str, *, missed: bool) -> None:
        chan, rng = self.chan, self.chan.rng
        if not self.session or self.session[-1].who != who:
            self.turn += 1
        chan.advance(self._gap_before(who, "", False))
        start = chan.now_ms
        if missed:
            minutes, end = 0, start + rng.randrange(8_000, 25_000)
        else:
            minutes = rng.randrange(4, 96)
            end = start + minutes * 60_000 + rng.randrange(-25_000, 25_000)
        msg = chan.post(
            who,
            kind="Call",
            content=f"Started a call that lasted {minutes} minutes.",
            call_end_ms=end,
        )
        self.session.append(_Posted(who, msg, self.turn))
        chan.now_ms = max(chan.now_ms, end)


def _decorate(
    chan: _Channel, humans: tuple[str, ...], edit_rate: float, reaction_rate: float
) -> None:
    """Edits and reactions land on messages after the fact, as in a real export."""
    rng = chan.rng
    ids = {m.person.id: k for k, m in chan.members.items()}
    for msg in chan.messages:
        who = ids[msg["author"]["id"]]
        if who not in humans or msg["type"] not in ("Default", "Reply"):
            continue
        if msg["content"] and not msg["content"].startswith("http") and rng.random() < edit_rate:
            ms = (int(msg["id"]) >> 22) + DISCORD_EPOCH_MS
            msg["timestampEdited"] = chan.iso(ms + rng.randrange(3_000, 600_000))
        if rng.random() < reaction_rate:
            others = [h for h in humans if h != who]
            reactors = rng.sample(others, k=1 if len(others) == 1 or rng.random() < 0.7 else 2)
            emoji = rng.choice(
                ["😂", "😂", "🔥", "👀", "😭"] if who == "A" else ["👍", "🎉", "😂", "😭"]
            )
            msg["reactions"] = [
                {
                    "emoji": _emoji_json(emoji),
                    "count": len(reactors),
                    "users": [_user_json(chan.member(r), with_roles=False) for r in reactors],
                }
            ]


def _fake_token(rng: random.Random) -> str:
    """Shaped like a Discord token (base64 user id, timestamp, HMAC), so redaction has work."""
    head = base64.b64encode(SAM.id.encode()).decode().rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    middle = "G" + "".join(rng.choice(alphabet) for _ in range(5))
    tail = "".join(rng.choice(alphabet) for _ in range(38))
    return f"{head}.{middle}.{tail}"


def _choose_script(topic: _Topic, rng: random.Random) -> list[str]:
    return rng.choices(topic.scripts, weights=topic.script_weights or None)[0]


def _dm_messages(rng: random.Random, count: int) -> list[dict]:
    start = int(datetime(2024, 2, 3, 19, 12, 40, tzinfo=UTC).timestamp() * 1000)
    chan = _Channel(rng, DM_CHANNEL_ID, None, DM_OFFSET_MINUTES, _DM_MEMBERS, start)
    convo = _Conversation(chan, reply_rates={"A": 0.12, "S": 0.03})

    # Specials fire at the first session after a random point of the DM, spread over all of it.
    low, high = count // 50, max(count // 50 + 1, count * 24 // 25)
    pending = sorted(
        (rng.randrange(low, high), name) for name, (n, _) in _SPECIALS.items() for _ in range(n)
    )
    token = _fake_token(rng)
    weights = [t.weight for t in _DM_TOPICS]

    first_session = True
    while len(chan.messages) < count:
        gap_hours = rng.choices(
            [rng.uniform(3, 20), rng.uniform(20, 72), rng.uniform(72, 170)], weights=[6, 3, 1]
        )[0]
        convo.start_session(0 if first_session else gap_hours)
        first_session = False
        plan: list[tuple[list[str], dict[str, str]]] = []
        callback_to = None
        if convo.recommendations and rng.random() < 0.04:
            callback_to, rec_slots = convo.recommendations.pop(0)
            plan.append((_CALLBACK, rec_slots))
        elif rng.random() < 0.3:
            hour = chan.local_hour()
            greetings = [g for lo, hi, g in _GREETINGS if lo <= hour < hi]
            plan.append((rng.choice(greetings), {}))
        previous = None
        for _ in range(rng.choices([1, 2, 3], weights=[5, 3.5, 1.5])[0]):
            topic = rng.choices(_DM_TOPICS, weights=weights)[0]
            if topic is previous:
                continue
            previous = topic
            slots = _pick_slots(topic.slots, rng)
            if "dish" in slots:
                slots["dish2"] = rng.choice([d for d in _DISHES if d != slots["dish"]])
            plan.append((_choose_script(topic, rng), slots))
        while pending and pending[0][0] <= len(chan.messages):
            _, name = pending.pop(0)
            slots = {"token": token, "city": rng.choice(_CITIES)}
            plan.insert(rng.randint(1, len(plan)), (_SPECIALS[name][1], slots))
        for script, slots in plan:
            convo.play(script, slots, callback_to if script is _CALLBACK else None)
        if rng.random() < 0.35:
            hour = chan.local_hour()
            fitting = [(w, c) for w, hours, c in _CLOSERS if hour in hours or hour + 24 in hours]
            convo.play(rng.choices([c for _, c in fitting], weights=[w for w, _ in fitting])[0], {})

    del chan.messages[count:]
    _decorate(chan, ("A", "S"), edit_rate=0.03, reaction_rate=0.03)
    return chan.messages


def _guild_messages(rng: random.Random, count: int) -> list[dict]:
    start = int(datetime(2024, 3, 9, 18, 2, 11, tzinfo=UTC).timestamp() * 1000)
    chan = _Channel(rng, GENERAL_CHANNEL_ID, GUILD_ID, GUILD_OFFSET_MINUTES, _GUILD_MEMBERS, start)
    convo = _Conversation(chan, reply_rates={"A": 0.18, "S": 0.06, "J": 0.08})
    slot_spec = {
        "day": _DAYS,
        "coop": _COOP,
        "song|artist": _SONGS,
        "movie": _MOVIES,
        "new": _NEW_GAMES,
    }

    convo.start_session(0)
    convo.play(
        [
            "A: welcome to the server lol",
            "S: @join",
            "J: @join",
            "S: This is so much better than the group chat! Thank you for setting it up :)",
            "A: np lol / added a music bot too",
            "B: @join",
        ],
        {},
    )
    casey_at = max(4, count // 2)
    while len(chan.messages) < count:
        convo.start_session(rng.uniform(20, 200))
        if len(chan.messages) >= casey_at and casey_at > 0:
            casey_at = 0
            convo.play(
                [
                    "C: @join",
                    "S: Welcome, Casey! We mostly talk about games and food here :)",
                    "J: hey casey, welcome",
                    "A: welcome [lol|] / ignore jordans memes",
                ],
                {},
            )
        for _ in range(rng.choices([1, 2], weights=[3, 2])[0]):
            convo.play(rng.choice(_GUILD_SCRIPTS), _pick_slots(slot_spec, rng))

    del chan.messages[count:]
    _decorate(chan, ("A", "S", "J"), edit_rate=0.03, reaction_rate=0.06)
    return chan.messages


def _document(guild: dict, channel: dict, messages: list[dict], exported_at: str) -> dict:
    return {
        "guild": guild,
        "channel": channel,
        "dateRange": {"after": None, "before": None},
        "exportedAt": exported_at,
        "messages": messages,
        "messageCount": len(messages),
    }


def _ms_of(msg: dict) -> int:
    return (int(msg["id"]) >> 22) + DISCORD_EPOCH_MS


def dm_file_name(part: int = 1) -> str:
    """DCE's default name for the DM export, with its ``[part N]`` suffix for later partitions."""
    base = f"Direct Messages - {DM_PARTNER} [{DM_CHANNEL_ID}]"
    return f"{base}.json" if part == 1 else f"{base} [part {part}].json"


def guild_file_name() -> str:
    return f"{GUILD_NAME} - {CATEGORY_NAME} - general [{GENERAL_CHANNEL_ID}].json"


def generate_sample_export(
    out_dir: Path, *, messages: int = 4000, seed: int = 7, part_size: int = 2500
) -> list[Path]:
    """Write the sample export into ``out_dir`` and return the files written.

    ``messages`` is the size of the DM between alex ("me") and sam, split into DCE partitions of
    ``part_size`` messages; a guild channel of about 7.5% of that size (at least 40 messages)
    with a third friend and a music bot is written beside it.
    """
    if messages < 1 or part_size < 1:
        raise ValueError(f"messages and part_size must be positive, got {messages}, {part_size}")
    rng = random.Random(seed)
    dm = _dm_messages(rng, messages)
    guild_msgs = _guild_messages(rng, max(40, round(messages * 0.075)))

    # Exported a couple of days after the last message, from a clock with 100 ns ticks.
    export_ms = max(_ms_of(dm[-1]), _ms_of(guild_msgs[-1])) + rng.randrange(36, 60) * 3_600_000
    export_ticks = export_ms * 10_000 + rng.randrange(1, 10_000)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    dm_guild = {
        "id": "0",
        "name": "Direct Messages",
        "iconUrl": "https://cdn.discordapp.com/embed/avatars/0.png",
    }
    dm_channel = {
        "id": DM_CHANNEL_ID,
        "type": "DirectTextChat",
        "categoryId": None,
        "category": None,
        "name": DM_PARTNER,
        "topic": None,
    }
    for part, first in enumerate(range(0, len(dm), part_size), start=1):
        # each partition's preamble is written when the partition opens, a few seconds apart
        ticks = export_ticks + (part - 1) * rng.randrange(20_000_000, 90_000_000)
        doc = _document(
            dm_guild,
            dm_channel,
            dm[first : first + part_size],
            _iso_ticks(ticks, DM_OFFSET_MINUTES),
        )
        path = out_dir / dm_file_name(part)
        path.write_bytes(dumps_like_dce(doc))
        written.append(path)

    guild_doc = _document(
        {
            "id": GUILD_ID,
            "name": GUILD_NAME,
            "iconUrl": f"https://cdn.discordapp.com/icons/{GUILD_ID}/9b6a0f1c2d3e4f5a6b7c8d9e0f1a2b3c.png?size=512",
        },
        {
            "id": GENERAL_CHANNEL_ID,
            "type": "GuildTextChat",
            "categoryId": CATEGORY_ID,
            "category": CATEGORY_NAME,
            "name": "general",
            "topic": "games, food, music and Noodle pictures",
        },
        guild_msgs,
        _iso_ticks(
            export_ticks + rng.randrange(1_200_000_000, 2_400_000_000), GUILD_OFFSET_MINUTES
        ),
    )
    path = out_dir / guild_file_name()
    path.write_bytes(dumps_like_dce(guild_doc))
    written.append(path)

    # A previous run with more partitions must not leave a stale "[part N]" behind.
    for stale in out_dir.glob(f"Direct Messages - {DM_PARTNER} [[]{DM_CHANNEL_ID}[]]*.json"):
        if stale not in written:
            stale.unlink()
    return written


def summarize(paths: Sequence[Path]) -> str:
    """Counts by file, author and message type: what ``main`` prints and the README quotes."""
    lines = []
    for path in paths:
        doc = json.loads(path.read_text(encoding="utf-8"))
        by = Counter((m["author"]["name"], m["type"]) for m in doc["messages"])
        lines.append(f"{path.name}: {doc['messageCount']} messages, {path.stat().st_size:,} bytes")
        for (author, kind), n in sorted(by.items()):
            lines.append(f"  {author:8} {kind:22} {n}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=sample_export_dir())
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--part-size", type=int, default=2500)
    args = parser.parse_args(argv)
    paths = generate_sample_export(
        args.out, messages=args.messages, seed=args.seed, part_size=args.part_size
    )
    print(summarize(paths))


if __name__ == "__main__":
    main()
